"""The ``towhee-rt`` command line (also ``python -m towhee_rt``).

    towhee-rt serve REPO [--grpc-port 8001] [--http-port 8000] [--host 127.0.0.1] ...
    towhee-rt quickstart --images DIR [--model-name resnet50] [--repo DIR]

``serve`` starts tritonserver (the one carried by ``nvidia-pytriton`` unless ``--tritonserver
PATH`` or ``--docker IMAGE`` says otherwise), waits until the server and every model are ready,
prints the endpoints and blocks; Ctrl-C (SIGINT) or SIGTERM stops it gracefully, then forcibly.
Endpoints bind 127.0.0.1 unless ``--host`` says otherwise. Exit codes: 0 after a stop by
signal, 1 when the server cannot start or dies, 130 when interrupted while starting.
``python -m towhee_rt.serve REPO`` is the same as ``towhee-rt serve REPO``.

``quickstart`` is the README's demo (:mod:`towhee_rt.quickstart`).
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path
from typing import List, Optional

from . import quickstart
from .errors import TowheeRTError
from .triton.flags import DEFAULT_GRPC_PORT, DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT
from .triton.server import TritonServer

STOP_TIMEOUT = 15.0
SERVE_DESCRIPTION = "Serve a Triton model repository (e.g. from towhee_rt.build_model_repo)."


def main(argv: Optional[List[str]] = None, prog: str = "towhee-rt") -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``); return the exit code."""
    parser = argparse.ArgumentParser(
        prog=prog, description="Serve embedding pipelines on NVIDIA Triton Inference Server.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    serve_parser = commands.add_parser("serve", help="serve a model repository",
                                       description=SERVE_DESCRIPTION)
    add_serve_arguments(serve_parser)
    serve_parser.set_defaults(run=lambda args: run_serve(args, serve_parser))
    quick_parser = commands.add_parser("quickstart", help="build, serve and query a demo pipeline",
                                       description=quickstart.DESCRIPTION)
    quickstart.add_arguments(quick_parser)
    quick_parser.set_defaults(run=quickstart.run)
    args = parser.parse_args(argv)
    return args.run(args)


def serve_main(argv: Optional[List[str]] = None, prog: str = "python -m towhee_rt.serve") -> int:
    """``towhee-rt serve`` alone, as ``python -m towhee_rt.serve`` runs it; the exit code."""
    parser = argparse.ArgumentParser(prog=prog, description=SERVE_DESCRIPTION)
    add_serve_arguments(parser)
    return run_serve(parser.parse_args(argv), parser)


# ----------------------------------------------------------------------------------- serve
def add_serve_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``serve`` to ``parser``."""
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


def run_serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Serve until SIGINT/SIGTERM; the exit code (0 stopped by signal, 1 failed, 130
    interrupted while starting). ``parser`` reports usage errors."""
    if args.repository is None and not args.docker:
        parser.error("the model repository is required (unless --docker IMAGE is given)")
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
        return _serve_until_stopped(server, ready, stop_requested)
    except KeyboardInterrupt:
        print("interrupted while starting; stopping tritonserver", file=sys.stderr)
        server.stop(STOP_TIMEOUT)
        return 130
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _serve_until_stopped(server: TritonServer, ready: threading.Event,
                         stop_requested: threading.Event) -> int:
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


def _print_endpoints(server: TritonServer) -> None:
    models = ", ".join(sorted(server.model_states())) or "(none)"
    print(f"tritonserver ready (pid {server.pid}, log {server.log_file})\n"
          f"  gRPC:    {server.grpc_url}\n"
          f"  HTTP:    http://{server.http_url}\n"
          f"  metrics: {server.metrics_url}\n"
          f"  models:  {models}\n"
          "Press Ctrl-C to stop", flush=True)
