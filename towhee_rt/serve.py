"""Serve a model repository on tritonserver: ``python -m towhee_rt.serve repo/``.

Starts tritonserver (the one carried by ``nvidia-pytriton`` unless ``--tritonserver PATH`` or
``--docker IMAGE`` says otherwise), waits until the server and every model are ready, prints
the endpoints and blocks; Ctrl-C (SIGINT) or SIGTERM stops it gracefully, then forcibly.
Endpoints bind 127.0.0.1 unless ``--host`` says otherwise. Exit codes: 0 after a stop by
signal, 1 when the server cannot start or dies, 130 when interrupted while starting.

From Python, :func:`serve` returns a running server::

    from towhee_rt.serve import serve
    with serve("repo/", grpc_port=0) as server:      # 0: any free port
        towhee.dc(["photo.jpg"]).remote(url=server.grpc_url, protocol="grpc")
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import List, Optional

from .errors import TowheeRTError
from .triton.server import PathLike, TritonServer

DEFAULT_GRPC_PORT = 8001
DEFAULT_HTTP_PORT = 8000
DEFAULT_METRICS_PORT = 8002
STOP_TIMEOUT = 15.0


def serve(model_repository: Optional[PathLike], *, grpc_port: Optional[int] = DEFAULT_GRPC_PORT,
          http_port: Optional[int] = DEFAULT_HTTP_PORT,
          metrics_port: Optional[int] = DEFAULT_METRICS_PORT, **kwargs) -> TritonServer:
    """Start tritonserver on ``model_repository`` and return it once every model is ready.

    Ports default to Triton's 8001/8000/8002; ``None`` or 0 picks a free port. Other keyword
    arguments go to :class:`~towhee_rt.triton.server.TritonServer` (``host``, ``tritonserver``,
    ``docker_image``, ``log_file``, ``ready_timeout``, ``extra_args``...). The result is a
    context manager that stops the server; otherwise call ``server.stop()``. Raises
    :class:`~towhee_rt.errors.ServerError` (with the log tail and failing models) on failure,
    after stopping what was started.
    """
    server = TritonServer(model_repository, grpc_port=grpc_port, http_port=http_port,
                          metrics_port=metrics_port, **kwargs)
    server.start()
    try:
        return server.wait_ready()
    except BaseException:
        server.stop()
        raise


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m towhee_rt.serve",
        description="Serve a Triton model repository (e.g. from towhee_rt.build_model_repo).")
    parser.add_argument("repository", nargs="?", type=Path,
                        help="the model repository; optional with --docker (the image's own "
                             "/workspace/models is served, or REPO is mounted over it)")
    parser.add_argument("--grpc-port", type=int, default=DEFAULT_GRPC_PORT,
                        help="gRPC port (default %(default)s; 0: any free port)")
    parser.add_argument("--http-port", type=int, default=DEFAULT_HTTP_PORT,
                        help="HTTP port (default %(default)s; 0: any free port)")
    parser.add_argument("--metrics-port", type=int, default=DEFAULT_METRICS_PORT,
                        help="metrics port (default %(default)s; 0: any free port)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address the endpoints bind (default %(default)s; 0.0.0.0: all)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--tritonserver", metavar="PATH",
                        help="a tritonserver binary to run instead of the embedded one")
    source.add_argument("--docker", metavar="IMAGE",
                        help="run tritonserver in this Docker image (docker run --net=host)")
    parser.add_argument("--log-file", type=Path,
                        help="where the server log goes (default: a temporary file)")
    parser.add_argument("--ready-timeout", type=float, default=120.0,
                        help="seconds to wait for every model to load (default %(default)s)")
    parser.add_argument("--log-verbose", type=int, default=0,
                        help="tritonserver --log-verbose level (default %(default)s)")
    return parser


def _print_endpoints(server: TritonServer) -> None:
    models = ", ".join(sorted(server.model_states())) or "(none)"
    print(f"tritonserver ready (pid {server.pid}, log {server.log_file})\n"
          f"  gRPC:    {server.grpc_url}\n"
          f"  HTTP:    http://{server.http_url}\n"
          f"  metrics: {server.metrics_url}\n"
          f"  models:  {models}\n"
          "Press Ctrl-C to stop", flush=True)


def main(argv: Optional[List[str]] = None) -> int:
    """The command line; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.repository is None and not args.docker:
        _parser().error("the model repository is required (unless --docker IMAGE is given)")
    server = TritonServer(args.repository, host=args.host, grpc_port=args.grpc_port,
                          http_port=args.http_port, metrics_port=args.metrics_port,
                          tritonserver=args.tritonserver, docker_image=args.docker,
                          log_file=args.log_file, log_verbose=args.log_verbose,
                          ready_timeout=args.ready_timeout)
    ready, stop_requested = threading.Event(), threading.Event()

    def on_signal(signum, frame):
        if stop_requested.is_set():  # a second Ctrl-C while stopping: do not wait any more
            server.kill()
            return
        stop_requested.set()
        if not ready.is_set():
            raise KeyboardInterrupt  # still starting: leave wait_ready()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        return _run(server, ready, stop_requested)
    except KeyboardInterrupt:
        print("interrupted while starting; stopping tritonserver", file=sys.stderr)
        server.stop(STOP_TIMEOUT)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(server: TritonServer, ready: threading.Event, stop_requested: threading.Event) -> int:
    try:
        server.start()
        server.wait_ready()
    except TowheeRTError as exc:
        server.stop(STOP_TIMEOUT)
        print(f"error: {exc}", file=sys.stderr)
        return 1
    ready.set()
    _print_endpoints(server)
    while not stop_requested.wait(0.5):
        if not server.is_alive():
            code = server.stop()
            print(f"error: tritonserver exited unexpectedly (code {code}); log: "
                  f"{server.log_file}\n" + server.log_text()[-4000:], file=sys.stderr)
            return 1
    print("stopping tritonserver...", flush=True)
    code = server.stop(STOP_TIMEOUT)
    print(f"tritonserver stopped (exit code {code})", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
