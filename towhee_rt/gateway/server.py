"""Start and stop the gateway: uvicorn serving the app in a background thread.

A thread rather than a child process: the gateway holds no model and little state, only a
towhee_rt client (network I/O that releases the GIL), so it costs one thread and one event loop
in the process that runs ``serve``; it binds its socket before returning (the port is known, and
taken, at once), needs no pickling or second interpreter start-up, stops with the process, and
its metrics and errors are in reach of the caller.
"""
from __future__ import annotations

import ipaddress
import logging
import socket
import threading
import time
from typing import Any, Optional

from ..errors import ConfigError
from ..triton.flags import check_key
from ._deps import require
from .app import DEFAULT_MAX_CONCURRENT_REQUESTS, create_app
from .backend import PipelineBackend
from .inputs import DEFAULT_MAX_ITEMS
from .responses import TokenCounter

log = logging.getLogger("towhee_rt.gateway")
#: Seconds in-flight requests get to finish on stop, before their connections are closed.
GRACEFUL_STOP_SECS = 5.0


class Gateway:
    """A running gateway: ``url`` (``http://host:port``), ``port``, :meth:`stop`.

    A context manager: ``with start_gateway(...) as gateway:`` stops it on exit. ``app`` is the
    ASGI app (its metrics: ``app.state.metrics``), ``backend`` the pipeline behind it.
    """

    def __init__(self, app: Any, backend: PipelineBackend, host: str = "127.0.0.1",
                 port: int = 0, graceful_stop: float = GRACEFUL_STOP_SECS):
        self.app, self.backend, self.host = app, backend, host
        self._sock = _bind(host, port)
        self.port: int = self._sock.getsockname()[1]
        uvicorn = require("uvicorn")
        config = uvicorn.Config(app, log_config=None, access_log=False, lifespan="off",
                                timeout_graceful_shutdown=max(1, int(graceful_stop)),
                                server_header=False)
        self._server = uvicorn.Server(config)
        self._thread: Optional[threading.Thread] = None
        self._error: Optional[BaseException] = None

    @property
    def url(self) -> str:
        """``http://host:port`` (OpenAI clients take ``base_url=gateway.url + '/v1'``)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self, timeout: float = 30.0) -> "Gateway":
        """Start serving; return once connections are accepted (``ServerError`` otherwise)."""
        from ..errors import ServerError

        self._thread = threading.Thread(target=self._run, name=f"towhee_rt-gateway-{self.port}",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise ServerError(f"the OpenAI gateway on {self.url} did not start"
                                  + (f": {self._error}" if self._error else
                                     f" within {timeout:g} s"))
            time.sleep(0.01)
        log.info("OpenAI-compatible gateway for model %r at %s/v1", self.backend.model_name,
                 self.url)
        return self

    def _run(self) -> None:
        try:
            self._server.run(sockets=[self._sock])
        except BaseException as exc:  # noqa: BLE001 - reported by start()
            self._error = exc
            log.error("the OpenAI gateway on %s stopped: %s", self.url, exc)

    def stop(self, timeout: float = 10.0) -> None:
        """Stop accepting, let in-flight requests finish (a few seconds), close the
        connections to Triton. Idempotent."""
        self._server.should_exit = True
        if self._thread is not None and self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                self._server.force_exit = True
                self._thread.join(timeout)
        try:
            self._sock.close()
        finally:
            self.backend.close()

    @property
    def running(self) -> bool:
        """Whether the gateway is serving."""
        return bool(self._thread and self._thread.is_alive() and self._server.started
                    and not self._server.should_exit)

    def __enter__(self) -> "Gateway":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"Gateway({self.url}, model={self.backend.model_name!r}, {state})"


def start_gateway(grpc_url: str, *, model_name: str = "pipeline", host: str = "127.0.0.1",
                  port: int = 0, api_key: Optional[str] = None, timeout: float = 60.0,
                  concurrency: Optional[int] = None, max_items: int = DEFAULT_MAX_ITEMS,
                  max_body_bytes: Optional[int] = None,
                  max_concurrent_requests: int = DEFAULT_MAX_CONCURRENT_REQUESTS,
                  token_counter: Optional[TokenCounter] = None,
                  fingerprint: Optional[str] = None, input_kind: Optional[str] = None,
                  start_timeout: float = 30.0) -> Gateway:
    """Serve OpenAI's embeddings API for the pipeline ``model_name`` served by the Triton
    server at ``grpc_url``; return once the gateway accepts connections.

    Example::

        import towhee_rt as towhee
        from towhee_rt.gateway import start_gateway
        with towhee.serve(repo, grpc_port=0, http_port=0, metrics_port=0) as server, \\
                start_gateway(server.grpc_url) as gateway:
            from openai import OpenAI
            OpenAI(base_url=gateway.url + "/v1", api_key="unused").embeddings.create(
                model="pipeline", input=["a photo of a cat"])

    ``host``/``port``: where to listen (loopback by default; ``port=0`` picks a free port,
    read it from ``.port``). ``api_key``: the server's key: clients must send it as
    ``Authorization: Bearer <key>``, and it is sent to Triton as its inference key.
    ``timeout``: seconds each request to Triton may take, retries included (504 after it).
    ``concurrency``: requests to Triton one large embeddings request keeps in flight (default:
    what ``towhee-rt tune`` recorded in the served pipeline, else 4).
    ``max_items``: inputs per embeddings request (2048, as OpenAI). ``max_body_bytes``: the
    largest body (default: the pipeline's ``max_request_bytes``). ``max_concurrent_requests``:
    embeddings requests answered at once (429 above). ``token_counter``: counts ``usage``
    (default: words of text, one per image). ``fingerprint``: sent as ``X-Model-Fingerprint``
    and in the model card (default: the served pipeline's own, read from its config). ``input_kind``: for repositories that do
    not record it. Raises ``ServerUnavailableError`` when Triton cannot be reached within
    ``timeout``, ``ClientError`` for an unknown model or a refused key, and ImportError with
    the install hint when the gateway's dependencies are missing.
    """
    if api_key is not None:
        api_key = check_key(api_key, "api_key")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise ConfigError(f"port must be an integer in 0..65535 (0: a free port), got {port!r}")
    for name, value in (("concurrency", concurrency), ("max_items", max_items),
                        ("max_concurrent_requests", max_concurrent_requests)):
        if name == "concurrency" and value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
    require("starlette")
    require("uvicorn")
    if not _is_loopback(host):
        log.warning("the OpenAI gateway binds %s, reachable from other machines%s", host,
                    "" if api_key else " and open to anyone (no api_key)")
    backend = PipelineBackend(grpc_url, model_name, api_key=api_key, timeout=timeout,
                              concurrency=concurrency, input_kind=input_kind)
    try:
        app = create_app(backend, api_key=api_key, max_body_bytes=max_body_bytes,
                         max_items=max_items, max_concurrent_requests=max_concurrent_requests,
                         token_counter=token_counter, fingerprint=fingerprint)
        return Gateway(app, backend, host, port).start(start_timeout)
    except BaseException:
        backend.close()
        raise


def _bind(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (listening starts with uvicorn)."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"cannot listen on host {host!r}: {exc}") from None
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as exc:
        sock.close()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror or exc}; choose "
                          "another port (0: a free one)") from None
    sock.set_inheritable(True)
    return sock


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
