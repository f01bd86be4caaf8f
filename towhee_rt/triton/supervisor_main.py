# SHIPPED: copied verbatim into the image as towhee_rt_supervisor/supervisor_main.py
# (towhee_rt.shipped.SUPERVISOR). Standard library and its sibling modules only; never towhee_rt.
"""Keep a tritonserver's Python-backend models serving, and leave nothing behind when it stops.

The supervisor's standalone runner, in two roles::

    python3 /workspace/towhee_rt_supervisor run -- tritonserver FLAGS...   # the image's entrypoint
    python3 /workspace/towhee_rt_supervisor run --user-args N -- tritonserver FLAGS... USER...
    python -I -S -c ... DIR watchdog --group PGID --shm-prefix P         # started by TritonServer

``run`` starts tritonserver (with ``--user-args N``: the last N words are a command the user
gave the image, such as ``tritonserver --model-repository=... --grpc-port=8001``, merged into
the others by :func:`~.command_merge.merge_command`; a flag that would undo a protection is
refused with exit code 2), supervises it (:class:`~.supervisor.Supervisor`), forwards
SIGTERM/SIGINT, reaps orphans (as PID 1 or a subreaper) and cleans up when it exits.
``watchdog`` waits for its standard input (a pipe whose other end only the launching process
holds) to close; if the launcher dies without stopping its server (SIGKILL), it kills what is
left of the server's process group and removes the server's shared-memory regions.

Standard library only, like the modules it imports (:mod:`.procs`, :mod:`.admin`,
:mod:`.supervisor`, :mod:`.command_merge`), so that it runs without towhee_rt and its packages:
the image holds them as the package ``towhee_rt_supervisor`` (:func:`towhee_rt.triton.docker.write_supervisor`),
and the host launcher runs the watchdog in an isolated interpreter
(:func:`standalone_command`).
"""
from __future__ import annotations

import argparse
import ctypes
import logging
import os
import signal
import subprocess
import sys
import threading
from typing import Dict, List, Optional, Sequence, Tuple

from .admin import TritonAdmin
from .command_merge import REFUSED_EXIT_CODE, RefusedFlag, merge_command
from .procs import (SHM_PREFIX_FLAG, kill_group, mib, remove_regions, remove_stale_regions,
                    shm_prefix, shm_prefix_flag)
from .supervisor import POLL_SECS, Supervisor, only_pinned_left

log = logging.getLogger("towhee_rt")

#: The package name these modules have when they run standalone (in the image as well).
PACKAGE = "towhee_rt_supervisor"
#: Imports this module as part of :data:`PACKAGE` from the directory given as the first
#: argument, without importing anything else (towhee_rt's own package included), and runs
#: :func:`main` with the other arguments.
_STANDALONE = ("import sys, types; package = types.ModuleType(%r); "
               "package.__path__ = [sys.argv.pop(1)]; sys.modules[package.__name__] = package; "
               "from %s.supervisor_main import main; sys.exit(main())" % (PACKAGE, PACKAGE))


def standalone_command(*args: str) -> List[str]:
    """The argv that runs :func:`main` with ``args`` in an isolated interpreter (``-I -S``:
    the standard library only) from the directory holding this module."""
    return [sys.executable, "-I", "-S", "-c", _STANDALONE,
            os.path.dirname(os.path.abspath(__file__)), *args]


# --------------------------------------------------------------------------- watchdog
def watchdog_main(group: int, prefix: Optional[str] = None,
                  container: Optional[str] = None) -> int:
    """Wait until standard input closes, then kill what is left of process group ``group``
    (and ``docker rm -f`` ``container``) and remove the regions named ``prefix...``."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # only the pipe ends the wait
    while True:
        try:
            if not os.read(0, 4096):
                break
        except InterruptedError:
            continue
        except OSError:
            break
    killed = kill_group(group)
    if container:
        subprocess.run(["docker", "rm", "-f", container], capture_output=True, timeout=60,
                       check=False)
    count, nbytes = remove_regions(prefix) if prefix else (0, 0)
    if killed or count:
        print(f"towhee_rt watchdog: the process that started tritonserver (pid {group}) is "
              f"gone; killed {killed} leftover process(es), removed {count} shared-memory "
              f"region(s) ({mib(nbytes)})", file=sys.stderr, flush=True)
    return 0


# -------------------------------------------------------------------------- run (image)
def _flag_value(argv: Sequence[str], name: str) -> Optional[str]:
    value = None
    for i, arg in enumerate(argv):
        if arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
        elif arg == name and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def admin_endpoint(argv: Sequence[str]) -> Tuple[str, Dict[str, str]]:
    """(``'127.0.0.1:<http port>'``, headers) of a tritonserver argv: the keys its
    ``--http-restricted-api`` flags require for the model-repository and model-config APIs."""
    port = _flag_value(argv, "--http-port") or "8000"
    address = _flag_value(argv, "--http-address") or "0.0.0.0"
    host = "127.0.0.1" if address in ("0.0.0.0", "::", "") else address
    headers: Dict[str, str] = {}
    for i, arg in enumerate(argv):
        setting = (arg.split("=", 1)[1] if arg.startswith("--http-restricted-api=")
                   else argv[i + 1] if arg == "--http-restricted-api" and i + 1 < len(argv)
                   else None)
        if setting and ":" in setting:
            apis, _, header = setting.partition(":")
            if {"model-repository", "model-config"} & set(apis.split(",")) and "=" in header:
                name, value = header.split("=", 1)
                headers[name] = value
    return f"{host}:{port}", headers


def _set_subreaper() -> None:
    if sys.platform.startswith("linux"):
        try:
            ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
        except (OSError, AttributeError):
            pass


class _ServerOutput(threading.Thread):
    """Copies tritonserver's output to ours; once it is stopping with ``pinned`` versions,
    kills it as soon as only those are left (see :func:`only_pinned_left`)."""

    def __init__(self, server: subprocess.Popen):
        super().__init__(name="towhee_rt-server-output", daemon=True)
        self.server = server
        self.pinned = 0
        self.cut_short = False
        self._since_stop: Optional[List[str]] = None
        self.start()

    def stopping(self, pinned: int) -> None:
        """tritonserver is being asked to stop; ``pinned`` versions will never unload."""
        if self._since_stop is None:
            self.pinned, self._since_stop = pinned, []

    def run(self) -> None:
        out = sys.stdout.buffer
        for line in iter(self.server.stdout.readline, b""):
            try:
                out.write(line)
                out.flush()
            except (OSError, ValueError):  # our stdout is gone: keep draining its pipe
                pass
            since = self._since_stop
            if since is None or not self.pinned or self.cut_short:
                continue
            since.append(line.decode(errors="replace"))
            if only_pinned_left("".join(since), self.pinned):
                log.info("tritonserver has unloaded every model but %d version(s) that cannot "
                         "unload (a request reached a dead stub); not waiting for them",
                         self.pinned)
                self.cut_short = True
                try:
                    os.kill(self.server.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass


def run_main(argv: Sequence[str], poll_secs: float = POLL_SECS) -> int:
    """Run the tritonserver command ``argv`` under supervision until it exits; its exit code
    (1 when a model was given up). SIGTERM/SIGINT go to tritonserver; a second SIGINT kills
    it. Orphans are reaped (as PID 1, or as a subreaper)."""
    if not argv:
        print("towhee_rt supervisor: no tritonserver command given (run -- tritonserver ...)",
              file=sys.stderr)
        return 64
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s towhee_rt supervisor %(levelname)s: %(message)s")
    _set_subreaper()
    count, nbytes = remove_stale_regions()
    if count:
        log.info("removed %d stale shared-memory region(s) (%s) of earlier runs", count,
                 mib(nbytes))
    argv = list(argv)
    prefix = None
    for arg in argv:
        if arg.startswith(SHM_PREFIX_FLAG):
            prefix = arg[len(SHM_PREFIX_FLAG):]
    if prefix is None:
        prefix = shm_prefix(number=0)
        argv.append(shm_prefix_flag(prefix))
    http_url, headers = admin_endpoint(argv)
    try:  # its output passes through us, so that a stop can see what it waits for
        server = subprocess.Popen(argv, start_new_session=True, stdout=subprocess.PIPE,
                                  stderr=subprocess.STDOUT)
    except OSError as exc:
        log.error("cannot start %s: %s", argv[0], exc)
        return 127
    output = _ServerOutput(server)
    state = {"signals": 0, "gave_up": False}
    supervisor: Optional[Supervisor] = None

    def terminate(signum: int) -> None:
        output.stopping(supervisor.pinned_versions() if supervisor else 0)
        try:
            os.kill(server.pid, signum)
        except ProcessLookupError:
            pass

    def forward(signum, frame):
        state["signals"] += 1
        terminate(signal.SIGKILL if state["signals"] > 1 and signum == signal.SIGINT
                  else signum)

    def on_event(event):
        if event["event"] == "gave_up" and not state["gave_up"]:
            state["gave_up"] = True
            log.error("stopping tritonserver: model %s cannot be kept serving", event["model"])
            terminate(signal.SIGTERM)

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, forward)
    supervisor = Supervisor(server.pid, TritonAdmin(http_url, headers), shm_prefix=prefix,
                            on_event=on_event, poll_secs=poll_secs).start()
    # Popen.wait() would race the reaping of orphans below, so reap everything here.
    code = None
    while code is None:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            code = 1
            break
        if pid == server.pid:
            code = os.waitstatus_to_exitcode(status)
    server.returncode = code
    output.join(5)
    if output.cut_short:
        code = 0  # stopped as asked; only versions Triton never unloads were left
    supervisor.stop()
    killed = kill_group(server.pid)
    removed, nbytes = remove_regions(prefix)
    log.info("tritonserver exited (code %s); killed %d leftover process(es), removed %d "
             "shared-memory region(s) (%s)", code, killed, removed, mib(nbytes))
    if state["gave_up"]:
        return 1
    return code if code >= 0 else 128 - code


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``run -- tritonserver ...`` or ``watchdog --group PGID [--shm-prefix P]``."""
    parser = argparse.ArgumentParser(prog=PACKAGE, description=__doc__.split(
        "\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run tritonserver under supervision")
    run.add_argument("--user-args", type=int, default=0, metavar="N",
                     help="the last N words of the command are the user's (tritonserver FLAGS "
                          "or FLAGS), merged into the others")
    run.add_argument("server_argv", nargs=argparse.REMAINDER,
                     help="-- then the tritonserver command")
    watch = commands.add_parser("watchdog", help="clean up after a launcher that died")
    watch.add_argument("--group", type=int, required=True)
    watch.add_argument("--shm-prefix")
    watch.add_argument("--container")
    args = parser.parse_args(argv)
    if args.command == "watchdog":
        return watchdog_main(args.group, args.shm_prefix, args.container)
    server_argv = list(args.server_argv)
    if server_argv[:1] == ["--"]:
        server_argv = server_argv[1:]
    if args.user_args:
        split = len(server_argv) - args.user_args
        if split < 1:
            parser.error(f"--user-args {args.user_args}: the command has only "
                         f"{len(server_argv)} words")
        try:
            server_argv = merge_command(server_argv[:split], server_argv[split:])
        except RefusedFlag as exc:
            print(f"towhee_rt entrypoint: {exc}", file=sys.stderr)
            return REFUSED_EXIT_CODE
    return run_main(server_argv)


if __name__ == "__main__":
    sys.exit(main())
