"""What the client's tests share: a web site on 127.0.0.1 to download items from, and a Client
with no server behind it (its transport answers from a script)."""
from __future__ import annotations

import contextlib
import dataclasses
import http.server
import threading
from typing import Any, Callable, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

from towhee_rt.client import Client
from towhee_rt.client.inputs import ServedInput
from towhee_rt.client.transport import ConnectionPool

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
#: Loopback ports nothing listens on: an offline client never reaches the network (its
#: transport answers from a script), and would be refused at once if it did.
OFFLINE_URLS = ("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3")


def model_of(served: ServedInput, max_batch_size: Optional[int] = None) -> Tuple[dict, dict]:
    """The metadata and config (JSON, as tritonclient returns them) of a one-input (BYTES)
    pipeline whose ensemble says ``served``."""
    meta = {"name": "pipeline", "inputs": [{"name": "image", "datatype": "BYTES",
                                            "shape": ["-1", "1"]}],
            "outputs": [{"name": "out", "datatype": "FP32", "shape": ["-1", "1"]}]}
    parameters = {name: {"string_value": str(value)} for name, value in (
        ("towhee_input_kind", served.kind), ("towhee_max_request_bytes",
                                             served.max_request_bytes),
        ("towhee_max_item_bytes", served.max_item_bytes)) if value is not None}
    return meta, {"name": "pipeline", "max_batch_size": max_batch_size or 0,
                  "parameters": parameters}


class Connection:
    """What the scripted transport's pool holds for one thread and url."""

    def __init__(self, url: str):
        self.url, self.closed = url, False

    def close(self) -> None:
        self.closed = True


def answer_sizes(url: str, payloads: List[Any], remaining: float) -> List[int]:
    """The default script: each payload's length."""
    return [len(p) for p in payloads]


class ScriptedTransport:
    """Stands in for the client's :class:`~towhee_rt.client.transport.Transport`: a request is
    answered by ``answer(url, payloads, remaining_seconds)`` (which may raise tritonclient's
    errors), a model read by ``reads(url)`` (``(meta, config)``, or an exception to raise).
    Records every request as ``(url, payloads)``, its remaining time, and the connections
    opened (a real :class:`ConnectionPool` of :class:`Connection`)."""

    def __init__(self, reads: Callable[[str], Any],
                 answer: Callable[[str, List[Any], float], List[Any]] = answer_sizes):
        self.reads, self.answer = reads, answer
        self.requests: List[Tuple[str, List[Any]]] = []
        self.timeouts: List[float] = []
        self.opened: List[Connection] = []
        self.connections = ConnectionPool(self._open)
        self._lock = threading.Lock()

    def _open(self, url: str) -> Connection:
        connection = Connection(url)
        self.opened.append(connection)
        return connection

    def read_model(self, url: str, remaining: float):
        self.connections.get(url)
        model = self.reads(url)
        if isinstance(model, BaseException):
            raise model
        return model

    def infer(self, url: str, model, values: List[Any], remaining: float) -> List[Any]:
        self.connections.get(url)
        with self._lock:
            self.requests.append((url, list(values)))
            self.timeouts.append(remaining)
        return self.answer(url, list(values), remaining)

    def ready(self, url: str) -> bool:
        model = self.reads(url)
        if isinstance(model, BaseException):
            raise model
        return True

    @property
    def payloads(self) -> List[List[Any]]:
        """Every request's payloads, in the order sent."""
        return [values for _, values in self.requests]

    def count(self, url: str) -> int:
        """Requests sent to ``url``."""
        return sum(1 for u, _ in self.requests if u == url)


def offline_client(served: ServedInput = ServedInput("image"), protocol: str = "grpc",
                   api_key: Optional[str] = None, max_batch_size: Optional[int] = None,
                   timeout: float = 5.0,
                   urls: Sequence[str] = OFFLINE_URLS[:1],
                   answer: Callable[[str, List[Any], float], List[Any]] = answer_sizes,
                   models: Optional[Dict[str, Any]] = None, **kwargs: Any) -> Client:
    """A real :class:`Client` of ``urls`` whose transport is a :class:`ScriptedTransport`
    (``client._transport``): requests answered by ``answer``, every url serving the pipeline
    :func:`model_of` describes unless ``models`` (url -> ``(meta, config)`` or an exception)
    says otherwise; ``kwargs``: more of Client's arguments (``retries``, ``backoff``, ...)."""
    client = Client(list(urls), protocol=protocol, timeout=timeout, api_key=api_key, **kwargs)
    same = model_of(served, max_batch_size)
    client._transport = ScriptedTransport(
        lambda url: (models or {}).get(url, same), answer)
    return client
