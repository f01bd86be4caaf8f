"""What the client's tests share: a web site on 127.0.0.1 to download items from, and a Client
with no server behind it."""
from __future__ import annotations

import contextlib
import dataclasses
import http.server
import threading
from typing import Iterator, List, Mapping, Optional

from towhee_rt.client import Client
from towhee_rt.client_inputs import ServedInput, request_headers
from towhee_rt.client_retry import RetryPolicy

from .local_http import serving


# ------------------------------------------------------------------------------ web site
@dataclasses.dataclass
class Site:
    """A running :func:`serve_files` site: its base URL and the paths asked for, in order."""

    url: str
    seen: List[str]


@contextlib.contextmanager
def serve_files(files: Mapping[str, bytes]) -> Iterator[Site]:
    """Serve ``files`` (URL path -> body; any other path: 404) over HTTP on a free port of
    127.0.0.1 until the block ends."""
    site = Site("", [])

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def do_GET(self):  # noqa: N802 - http.server's name
            site.seen.append(self.path)
            body = files.get(self.path)
            if body is None:
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    for running in serving(httpd):
        site.url = f"http://127.0.0.1:{running.server_address[1]}"
        yield site


# ---------------------------------------------------------------- a client, no server behind it
class Recorder:
    """Stands in for Client._send: records each request's payloads, answers their sizes."""

    def __init__(self):
        self.requests: List[List[bytes]] = []
        self.timeouts: List[float] = []

    def __call__(self, payloads, timeout=None):
        self.requests.append(list(payloads))
        self.timeouts.append(timeout)
        return [len(p) for p in payloads]


def offline_client(served: ServedInput, protocol: str = "grpc", api_key: Optional[str] = None,
                   max_batch_size: Optional[int] = None, retry: RetryPolicy = RetryPolicy(),
                   timeout: float = 5.0) -> Client:
    """A :class:`Client` of a one-input (BYTES) pipeline that reads nothing from a server; its
    ``_send`` is a :class:`Recorder`."""
    client = object.__new__(Client)  # no server: only what stream and _call use
    client.url, client.model_name, client.protocol = "127.0.0.1:1", "pipeline", protocol
    client.timeout, client.on_request, client._api_key = timeout, None, api_key
    client.retry = retry
    client.headers = request_headers(protocol, api_key)
    client._inputs = [{"name": "image", "datatype": "BYTES", "shape": [-1, 1]}]
    client._outputs = ["out"]
    client.served, client.max_batch_size = served, max_batch_size
    client._clients, client._lock = {}, threading.Lock()
    client._send = Recorder()
    return client
