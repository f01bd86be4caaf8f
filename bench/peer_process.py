"""Start an HTTP peer server as a child process, wait for its health URL, stop it by PID.

Used by ``bench/peer_infinity.py`` and ``bench/peer_litserve.py``. The child gets its own
session (process group), so the workers it forks are stopped with it: SIGTERM to the group,
SIGKILL to what is left after a grace period. Its output goes to a log file (bounded reads
only: the last lines are quoted when it fails to start).
"""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import tempfile
import time
from collections import deque
from typing import Any, Dict, Iterator, List, Mapping, Optional

from .http_load import wait_http_ok


def free_ports(count: int) -> List[int]:
    """``count`` distinct free TCP ports on 127.0.0.1."""
    from towhee_rt.triton.ports import find_free_port

    ports: List[int] = []
    while len(ports) < count:
        port = find_free_port()
        if port not in ports:
            ports.append(port)
    return ports


def log_tail(path: str, lines: int = 30, max_bytes: int = 64 * 1024) -> str:
    """The last ``lines`` lines of at most the last ``max_bytes`` of a log file."""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - max_bytes))
            text = f.read().decode("utf-8", "replace")
    except OSError as exc:
        return f"(no log: {exc})"
    return "\n".join(deque(text.splitlines(), maxlen=lines))


def _stop(proc: subprocess.Popen, grace: float) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)  # workers left behind, if any
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


@contextlib.contextmanager
def child_server(name: str, argv: List[str], health_url: str, env: Mapping[str, str],
                 cwd: str, ready_timeout: float = 240.0, grace: float = 15.0,
                 log_file: Optional[str] = None) -> Iterator[Dict[str, Any]]:
    """Run ``argv`` until ``health_url`` answers 200; yield ``{pid, startup_s, log_file}``;
    stop the child's whole process group on exit."""
    if log_file is None:
        fd, log_file = tempfile.mkstemp(prefix=f"bench-{name}-", suffix=".log")
        os.close(fd)
    t0 = time.perf_counter()
    with open(log_file, "ab") as log:
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, env=dict(env), cwd=cwd,
                                start_new_session=True)
    try:
        ready = wait_http_ok(health_url, time.monotonic() + ready_timeout,
                             lambda: proc.poll() is None)
        if not ready:
            state = (f"exited with {proc.returncode}" if proc.poll() is not None
                     else f"not healthy after {ready_timeout:.0f} s")
            raise RuntimeError(f"{name} did not start ({state}); log {log_file}:\n"
                               + log_tail(log_file))
        yield {"pid": proc.pid, "startup_s": round(time.perf_counter() - t0, 1),
               "log_file": log_file}
    finally:
        _stop(proc, grace)
