"""The machine a search ran on, and how busy other processes kept it (the noise in its figures).
"""
from __future__ import annotations

import datetime
import os
import platform
import time
from importlib import metadata
from typing import Dict, Optional

from ..backends.cpu import usable_cores
from ..triton import procs


def package_version(dist: str) -> str:
    """The installed version of distribution ``dist``, ``'-'`` when it is not installed."""
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "-"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), or what :mod:`platform` says."""
    try:
        with open("/proc/cpuinfo") as f:
            return next(line.split(":", 1)[1].strip() for line in f
                        if line.startswith("model name"))
    except (OSError, StopIteration):
        return platform.processor() or "unknown"


def describe() -> Dict[str, object]:
    """CPU model, usable cores, OS, Python, date and the versions that matter to the figures."""
    return {"cpu": cpu_model(), "cores": usable_cores(), "platform": platform.platform(),
            "python": platform.python_version(),
            "date": datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
            "versions": {name: package_version(name) for name in (
                "towhee_rt", "nvidia-pytriton", "onnxruntime", "torch", "tritonclient")}}


def _group_ticks(pgid: Optional[int]) -> int:
    """CPU ticks of a process group (tritonserver and its stubs, reaped stubs included)."""
    return sum(member.cpu_ticks for member in procs.group_members(pgid)) if pgid else 0


class OtherLoad:
    """Cores used by processes other than this one and the server's group, since
    :meth:`start` (None where ``/proc`` cannot tell)."""

    def __init__(self, server_pgid: Optional[int] = None):
        self.server_pgid = server_pgid
        self.start()

    def _own(self) -> float:
        times = os.times()
        return times.user + times.system + _group_ticks(self.server_pgid) / procs.CLOCK_TICKS

    def start(self) -> None:
        self._t, self._busy, self._own0 = time.monotonic(), procs.busy_cpu_ticks(), self._own()

    def cores(self) -> Optional[float]:
        busy, elapsed = procs.busy_cpu_ticks(), time.monotonic() - self._t
        if busy is None or self._busy is None or elapsed <= 0:
            return None
        other = (busy - self._busy) / procs.CLOCK_TICKS - (self._own() - self._own0)
        return max(0.0, other / elapsed)
