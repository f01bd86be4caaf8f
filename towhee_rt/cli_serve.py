"""``towhee-rt serve REPO`` (also ``python -m towhee_rt.serve REPO``): serve a model repository
in the foreground until Ctrl-C or SIGTERM.

Starting, waiting, serving and stopping are the library's
(:meth:`~towhee_rt.triton.server.TritonServer.serve_forever`); this module turns options into a
:class:`~towhee_rt.triton.server.TritonServer`, reads key files, and prints. Quiet by default:
a failed start prints its cause (the failing model and Triton's reason), then where the log
is; ``--verbose`` adds the log's last lines and towhee_rt's own messages. The server's log is
a temporary file removed after a clean stop unless ``--keep-log`` or ``--log-file PATH``.
Exit codes: 0 stopped by a signal, 1 failed (cannot start, died, a model kept dying), 2 usage
error, 130 interrupted while starting.
"""
from __future__ import annotations

import argparse
import logging
import os
import stat
import sys
from pathlib import Path

from . import cli_args
from .errors import ConfigError, TowheeRTError
from .triton.flags import (ADMIN_APIS, ADMIN_KEY_HEADER, API_KEY_HEADER, DEFAULT_GRPC_PORT,
                           DEFAULT_HTTP_PORT, DEFAULT_METRICS_PORT, GRPC_HEADER_PREFIX,
                           STOP_TIMEOUT_SECS, check_key)
from .triton.server import TritonServer

#: A graceful stop waits this long for tritonserver (its exit timeout and then some).
STOP_TIMEOUT = float(STOP_TIMEOUT_SECS)
#: A key file is read up to this size (a key is short; anything larger is a wrong file).
MAX_KEY_FILE_BYTES = 4096
DESCRIPTION = "Serve a Triton model repository (e.g. from towhee_rt.build_model_repo)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the options of ``serve`` to ``parser``."""
    parser.add_argument("repository", nargs="?", type=Path,
                        help="the model repository; optional with --docker (the image's own "
                             "/workspace/models is served, or REPO is mounted over it)")
    for name, default in (("grpc", DEFAULT_GRPC_PORT), ("http", DEFAULT_HTTP_PORT),
                          ("metrics", DEFAULT_METRICS_PORT)):
        parser.add_argument(f"--{name}-port", type=cli_args.port, default=default,
                            help=f"{name} port (default %(default)s; 0: any free port)")
    parser.add_argument("--openai-port", type=cli_args.port, default=None, metavar="PORT",
                        help="also serve OpenAI's /v1/embeddings on PORT (0: any free port; "
                             "needs pip install 'towhee_rt[openai]')")
    parser.add_argument("--openai-model", metavar="PIPELINE",
                        help="the pipeline the OpenAI endpoint serves (default: the one "
                             "pipeline in the repository)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="address the endpoints bind (default %(default)s; 0.0.0.0: all)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--tritonserver", metavar="PATH",
                        help="a tritonserver binary to run instead of the embedded one")
    source.add_argument("--docker", metavar="IMAGE",
                        help="run tritonserver in this Docker image (docker run --net=host)")
    parser.add_argument("--log-file", type=Path,
                        help="where the server log goes, kept (default: a temporary file, "
                             "removed after a clean stop)")
    parser.add_argument("--keep-log", action="store_true",
                        help="keep the temporary server log after a clean stop")
    parser.add_argument("--verbose", "-v", action="store_true",
                        help="show towhee_rt's messages and, on failure, the server log's end")
    parser.add_argument("--ready-timeout", type=cli_args.positive_float, default=120.0,
                        help="seconds to wait for every model to load (default %(default)s)")
    parser.add_argument("--log-verbose", type=cli_args.non_negative_int, default=0,
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


def _server(args: argparse.Namespace, parser: argparse.ArgumentParser) -> TritonServer:
    """The server ``args`` describe; usage errors (exit 2) through ``parser``."""
    if args.repository is None and not args.docker:
        parser.error("the model repository is required (unless --docker IMAGE is given)")
    try:
        api_key = read_key_file(args.api_key_file) if args.api_key_file else None
        admin_key = (read_key_file(args.admin_key_file, "--admin-key-file")
                     if args.admin_key_file else None)
    except ConfigError as exc:
        parser.error(str(exc))
    return TritonServer(args.repository, host=args.host, grpc_port=args.grpc_port,
                        http_port=args.http_port, metrics_port=args.metrics_port,
                        tritonserver=args.tritonserver, docker_image=args.docker,
                        log_file=args.log_file, keep_log=getattr(args, "keep_log", False),
                        log_verbose=args.log_verbose, ready_timeout=args.ready_timeout,
                        api_key=api_key, admin_key=admin_key,
                        openai_port=getattr(args, "openai_port", None),
                        openai_model=getattr(args, "openai_model", None))


def run_serve(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Serve until SIGINT/SIGTERM; the exit code (0 stopped by signal, 1 failed, 130
    interrupted while starting). ``parser`` reports usage errors (exit 2)."""
    verbose = getattr(args, "verbose", False)
    server = _server(args, parser)
    _log_to_stderr(logging.DEBUG if verbose else logging.WARNING)
    try:
        outcome = server.serve_forever(on_ready=_print_endpoints, on_stopping=lambda: print(
            "stopping tritonserver...", flush=True))
    except KeyboardInterrupt:
        print("interrupted while starting; tritonserver is stopped", file=sys.stderr)
        return 130
    except TowheeRTError as exc:
        print(f"error: {exc}", file=sys.stderr)
        tail = getattr(exc, "log_tail", "")
        if verbose and tail and tail not in str(exc):
            print(f"last lines of the log:\n{tail}", file=sys.stderr)
        return 1
    if outcome.failed:
        print(f"error: {outcome.message}", file=sys.stderr, flush=True)
        if outcome.log_tail:
            print(outcome.log_tail, file=sys.stderr)
        return 1
    print(outcome.message, flush=True)
    return 0


def _log_to_stderr(level: int = logging.WARNING) -> None:
    """Show towhee_rt's log (the supervisor's recoveries among it) on stderr, with times."""
    logger = logging.getLogger("towhee_rt")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s towhee_rt %(levelname)s: "
                                               "%(message)s"))
        logger.addHandler(handler)
        logger.setLevel(level)


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
    kept = "kept" if server.keep_log else "removed after a clean stop; --keep-log keeps it"
    print(f"tritonserver ready (pid {server.pid}, log {server.log_file}, {kept})\n"
          f"  gRPC:    {server.grpc_url}\n"
          f"  HTTP:    http://{server.http_url}\n"
          f"  metrics: {server.metrics_url}\n"
          + (f"  OpenAI:  {server.openai_url}/v1/embeddings\n" if server.has_gateway else "")
          + f"  models:  {models}\n"
          f"  inference: {inference}\n"
          f"  admin APIs ({', '.join(ADMIN_APIS)}): {admin}\n"
          f"  supervision: {supervision}\n"
          "Press Ctrl-C to stop", flush=True)
