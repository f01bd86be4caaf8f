"""The tritonserver process of one start, and everything needed to leave nothing behind.

:class:`ServerProcess` launches the argv in its own session (a terminal's Ctrl-C reaches only
us; :func:`~.procs.kill_group` empties the session later), makes it die with the thread that
started it (``PR_SET_PDEATHSIG``), sends its output to the log file, and starts a small
watchdog process that cleans up if our process dies without :meth:`ServerProcess.cleanup`
(:mod:`.supervisor_main`). :meth:`ServerProcess.terminate` is the graceful stop,
:meth:`ServerProcess.cleanup` the forced one: stubs killed, the container removed,
shared-memory regions unlinked.
"""
from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional

from . import procs
from .server_log import read_log
from .supervisor import only_pinned_left
from .supervisor_main import standalone_command

log = logging.getLogger("towhee_rt")


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # 1 == PR_SET_PDEATHSIG


def temporary_log_file() -> Path:
    """A new, empty ``towhee_rt-tritonserver-*.log`` in the temporary directory."""
    fd, name = tempfile.mkstemp(prefix="towhee_rt-tritonserver-", suffix=".log")
    os.close(fd)
    return Path(name)


def remove_regions_of_dead_processes() -> None:
    """Unlink the shared-memory regions that towhee_rt processes now gone left behind."""
    count, nbytes = procs.remove_stale_regions()
    if count:
        log.info("removed %d shared-memory region(s) (%s) left by towhee_rt processes that "
                 "are gone", count, procs.mib(nbytes))


class ServerProcess:
    """One running tritonserver (or ``docker run``), its watchdog and what it leaves.

    ``shm_prefix`` names the Python backend's regions of a host server; ``container`` the
    container of a ``docker run``. Both are removed by :meth:`cleanup`.
    """

    def __init__(self, argv: List[str], env: Dict[str, str], log_file: Path,
                 shm_prefix: Optional[str] = None, container: Optional[str] = None):
        self.log_file = log_file
        self.shm_prefix = shm_prefix
        self.container = container
        open(log_file, "wb").close()
        with open(log_file, "ab") as log_out:  # append: the watchdog may write too
            self.popen = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log_out, stderr=subprocess.STDOUT,
                env=env, start_new_session=True, preexec_fn=_die_with_parent, close_fds=True)
        self._watchdog: Optional[subprocess.Popen] = None
        self._watchdog_pipe: Optional[int] = None
        self._start_watchdog()

    @property
    def pid(self) -> int:
        """tritonserver's pid, also its session and process group id."""
        return self.popen.pid

    @property
    def returncode(self) -> Optional[int]:
        return self.popen.returncode

    def poll(self) -> Optional[int]:
        """The exit code once the process has exited, else ``None``."""
        return self.popen.poll()

    def _start_watchdog(self) -> None:
        """A small process that cleans up after us if this process dies without cleanup()."""
        read_end, self._watchdog_pipe = os.pipe()  # not inherited by tritonserver (PEP 446)
        argv = standalone_command("watchdog", "--group", str(self.pid))
        if self.shm_prefix:
            argv += ["--shm-prefix", self.shm_prefix]
        if self.container:
            argv += ["--container", self.container]
        try:
            with open(self.log_file, "ab") as log_out:
                self._watchdog = subprocess.Popen(argv, stdin=read_end, stdout=log_out,
                                                  stderr=log_out, start_new_session=True)
        except OSError as exc:
            log.warning("no watchdog (%s): if this process is killed, tritonserver's stubs and "
                        "shared memory may be left behind until the next start", exc)
            os.close(self._watchdog_pipe)
            self._watchdog_pipe = None
        finally:
            os.close(read_end)

    def terminate(self, timeout: float, pinned: int = 0) -> None:
        """SIGTERM, then wait up to ``timeout`` s for the exit; with ``pinned`` model versions
        that Triton never unloads, only until every other model is unloaded (it would
        otherwise spend its whole exit timeout waiting for them)."""
        if self.popen.poll() is not None:
            return
        log_offset = self.log_file.stat().st_size if self.log_file.exists() else 0
        self.popen.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                self.popen.wait(0.2)
                return
            except subprocess.TimeoutExpired:
                pass
            if pinned and only_pinned_left(read_log(self.log_file, log_offset), pinned):
                log.info("tritonserver has unloaded every model but %d version(s) that cannot "
                         "unload (a request reached a dead stub); not waiting for them",
                         pinned)
                return
        log.warning("tritonserver did not stop within %.0f s; killing it", timeout)

    def cleanup(self) -> None:
        """Kill what is left of the server, remove its regions, let the watchdog go."""
        procs.kill_group(self.pid)  # start_new_session: group id == pid
        self.popen.wait()
        procs.kill_group(self.pid)  # stubs that outlived their server
        if self.container:  # killing `docker run` leaves its container running
            subprocess.run(["docker", "rm", "-f", self.container], capture_output=True,
                           timeout=60, check=False)
            self.container = None
        if self.shm_prefix:
            procs.remove_regions(self.shm_prefix)
        if self._watchdog_pipe is not None:
            os.close(self._watchdog_pipe)  # the watchdog finds nothing left and exits
            self._watchdog_pipe = None
        if self._watchdog is not None:
            try:
                self._watchdog.wait(10)
            except subprocess.TimeoutExpired:
                self._watchdog.kill()
                self._watchdog.wait()
            self._watchdog = None
