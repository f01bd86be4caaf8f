"""The ``towhee-rt`` command line (also ``python -m towhee_rt``).

    towhee-rt serve REPO [--grpc-port 8001] [--http-port 8000] [--host 127.0.0.1]
                         [--api-key-file FILE] [--admin-key-file FILE] ...
    towhee-rt quickstart --images DIR [--model-name resnet50] [--repo DIR]
    towhee-rt tune REPO [--out DIR] [--objective throughput|latency] [--time-budget S] ...
    towhee-rt deploy kubernetes REPO --image IMAGE [--out DIR] [--kserve] ...

``serve`` starts tritonserver (the one carried by ``nvidia-pytriton`` unless ``--tritonserver
PATH`` or ``--docker IMAGE`` says otherwise), waits until the server and every model are ready,
prints the endpoints and blocks; Ctrl-C (SIGINT) or SIGTERM stops it gracefully, then forcibly.
While it serves, a model whose Python stub dies or hangs is reloaded and the recovery logged
(:mod:`towhee_rt.triton.supervisor`); a model that keeps dying stops the server.
Endpoints bind 127.0.0.1 unless ``--host`` says otherwise. ``--api-key-file`` makes inference
require the key in that file (a file, so that the key is not on a command line ``ps`` shows);
the admin APIs need ``--admin-key-file``'s key, or are closed. Exit codes: 0 after a stop by
signal, 1 when the server cannot start or dies or a model keeps dying, 2 for a usage error (a
bad key file), 130 when interrupted while starting.
``python -m towhee_rt.serve REPO`` is the same as ``towhee-rt serve REPO``.

``quickstart`` is the README's demo (:mod:`towhee_rt.quickstart`); ``tune`` is
``python -m towhee_rt.tune`` (:mod:`towhee_rt.tune`); ``deploy`` is ``python -m towhee_rt.deploy``
(:mod:`towhee_rt.deploy`).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import stat
import sys
import threading
from pathlib import Path
from typing import List, Optional

from . import quickstart
from .deploy import cli as deploy_cli
from .errors import ConfigError, TowheeRTError
from .triton.flags import (ADMIN_APIS, ADMIN_KEY_HEADER, API_KEY_HEADER, DEFAULT_GRPC_PORT,
                           DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT, GRPC_HEADER_PREFIX,
                           STOP_TIMEOUT_SECS, check_key)
from .triton.server import TritonServer
from .tune import cli as tune_cli

#: A graceful stop waits this long for tritonserver (its exit timeout and then some).
STOP_TIMEOUT = float(STOP_TIMEOUT_SECS)
#: A key file is read up to this size (a key is short; anything larger is a wrong file).
MAX_KEY_FILE_BYTES = 4096
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
    tune_parser = commands.add_parser("tune", help="search a repository's serving settings",
                                      description=tune_cli.DESCRIPTION)
    tune_cli.add_arguments(tune_parser)
    tune_parser.set_defaults(run=lambda args: tune_cli.run(args, prog))
    deploy_parser = commands.add_parser("deploy", help="write Kubernetes / KServe manifests",
                                        description=deploy_cli.SUMMARY)
    deploy_cli.add_arguments(deploy_parser)
    deploy_parser.set_defaults(run=deploy_cli.run)
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
    parser.add_argument("--api-key-file", type=Path, metavar="FILE",
                        help=f"inference requires the key in FILE (header {API_KEY_HEADER}; "
                             "clients: api_key=...); the file must not be readable by others")
    parser.add_argument("--admin-key-file", type=Path, metavar="FILE",
                        help=f"the admin APIs ({', '.join(ADMIN_APIS)}) require the key in "
                             f"FILE (header {ADMIN_KEY_HEADER}); default: closed to everyone")


def read_key_file(path: Path, option: str = "--api-key-file") -> str:
    """The key in ``path``, surrounding whitespace stripped. Raises :class:`ConfigError` when
    the file is missing, not a regular file, readable by others, empty or not a valid key."""
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{option} {path}: not a regular file")
        if info.st_mode & stat.S_IROTH:
            raise ConfigError(f"{option} {path} is readable by every user of this machine; "
                              f"make it private first: chmod 600 {path}")
        with open(path, "rb") as f:
            data = f.read(MAX_KEY_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"{option} {path}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > MAX_KEY_FILE_BYTES:
        raise ConfigError(f"{option} {path} is larger than {MAX_KEY_FILE_BYTES} bytes; it "
                          "should hold just the key")
    try:
        key = data.decode("ascii").strip()
    except UnicodeDecodeError:
        raise ConfigError(f"{option} {path}: the key may hold printable ASCII characters "
                          "only") from None
    if not key:
        raise ConfigError(f"{option} {path} is empty; write a key into it, e.g. python -c "
                          "'import secrets; print(secrets.token_urlsafe(32))' > FILE")
    return check_key(key, f"the key in {path}")


def run_serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Serve until SIGINT/SIGTERM; the exit code (0 stopped by signal, 1 failed, 130
    interrupted while starting). ``parser`` reports usage errors."""
    if args.repository is None and not args.docker:
        parser.error("the model repository is required (unless --docker IMAGE is given)")
    try:
        api_key = read_key_file(args.api_key_file) if args.api_key_file else None
        admin_key = (read_key_file(args.admin_key_file, "--admin-key-file")
                     if args.admin_key_file else None)
    except ConfigError as exc:
        parser.error(str(exc))
    _log_to_stderr()
    server = TritonServer(args.repository, host=args.host, grpc_port=args.grpc_port,
                          http_port=args.http_port, metrics_port=args.metrics_port,
                          tritonserver=args.tritonserver, docker_image=args.docker,
                          log_file=args.log_file, log_verbose=args.log_verbose,
                          ready_timeout=args.ready_timeout, api_key=api_key,
                          admin_key=admin_key)
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
        if server.given_up_models:
            models = ", ".join(sorted(server.given_up_models))
            print(f"error: model {models} kept dying and was left unloaded; stopping "
                  f"tritonserver (log: {server.log_file})", file=sys.stderr, flush=True)
            server.stop(STOP_TIMEOUT)
            return 1
    print("stopping tritonserver...", flush=True)
    code = server.stop(STOP_TIMEOUT)
    print(f"tritonserver stopped (exit code {code})", flush=True)
    return 0


def _log_to_stderr() -> None:
    """Show towhee_rt's log (the supervisor's recoveries among it) on stderr, with times."""
    logger = logging.getLogger("towhee_rt")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s towhee_rt %(levelname)s: "
                                               "%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)


def _print_endpoints(server: TritonServer) -> None:
    models = ", ".join(sorted(server.model_states())) or "(none)"
    inference = (f"requires the key (HTTP header {API_KEY_HEADER}, gRPC metadata "
                 f"{GRPC_HEADER_PREFIX}{API_KEY_HEADER}; clients: api_key=...)"
                 if server.api_key else "open to every client that reaches the endpoints")
    admin = ("require the --admin-key-file key (header " + ADMIN_KEY_HEADER + ")"
             if not server.admin_key_random else "closed (pass --admin-key-file to use them)")
    supervision = ("a model whose stub dies or hangs is reloaded (logged below); readiness "
                   "is false until it is back" if server.supervised
                   else "off (--docker runs tritonserver itself; an image from "
                        "build_docker_image supervises it when started with its own entrypoint)")
    print(f"tritonserver ready (pid {server.pid}, log {server.log_file})\n"
          f"  gRPC:    {server.grpc_url}\n"
          f"  HTTP:    http://{server.http_url}\n"
          f"  metrics: {server.metrics_url}\n"
          f"  models:  {models}\n"
          f"  inference: {inference}\n"
          f"  admin APIs ({', '.join(ADMIN_APIS)}): {admin}\n"
          f"  supervision: {supervision}\n"
          "Press Ctrl-C to stop", flush=True)
