"""CPU use during a benchmark point: this benchmark's own processes, each labelled
(:class:`CpuSplit`), and everything else on the machine (:class:`ForeignLoad`,
:func:`wait_for_quiet`). ``/proc`` is read through :mod:`towhee_rt.triton.procs`."""
from __future__ import annotations

import os
import time
from typing import Dict

from towhee_rt.triton import procs


def _process_tree_ticks(root: int) -> int:
    """CPU ticks of ``root`` and every live descendant (with their waited-for children)."""
    return sum(stat.cpu_ticks for stat in procs.process_tree(root))


def process_label(pid: int) -> str:
    """A short name for one of the benchmark's processes (Triton stubs by model instance)."""
    if pid == os.getpid():
        return "bench process (client)"
    argv = procs.cmdline(pid)
    stub = procs.parse_stub(pid, argv)
    if stub is not None:
        return f"stub {stub.instance}"
    if "bench.peer_pytriton" in argv:
        return "pytriton user process"
    return os.path.basename(argv[0]) if argv else f"pid {pid}"


def server_process_label(pid: int, server_pid: int, per_model: bool = False) -> str:
    """A process of the served tree: ``tritonserver``, ``stub <instance>`` (``per_model``:
    ``stub <model>``, so that a model's instances add up), else ``pid N``. A stub killed and
    started again keeps its label."""
    if pid == server_pid:
        return "tritonserver"
    stub = procs.parse_stub(pid, procs.cmdline(pid))
    if stub is None:
        return f"pid {pid}"
    return f"stub {stub.model if per_model else stub.instance}"


class CpuSplit:
    """CPU used by each process of the benchmark's tree over a window, in cores."""

    def __init__(self):
        self._t = time.perf_counter()
        self._start = {stat.pid: stat.cpu_ticks for stat in procs.process_tree(os.getpid())}

    def cores(self) -> Dict[str, float]:
        elapsed = time.perf_counter() - self._t
        out: Dict[str, float] = {}
        for stat in procs.process_tree(os.getpid()):
            used = stat.cpu_ticks - self._start.get(stat.pid, 0)
            if used > 0:
                label = process_label(stat.pid)
                out[label] = round(out.get(label, 0.0) + used / procs.CLOCK_TICKS / elapsed, 2)
        return dict(sorted(out.items(), key=lambda kv: -kv[1]))


class ForeignLoad:
    """CPU used by processes outside this benchmark's process tree, in cores, over a window.

    Other people's test runs on a 2-core machine move every figure; each point records this so
    a reader (and ``run.py``, which re-measures noisy points) can tell.
    """

    def __init__(self):
        self.start()

    def start(self) -> None:
        self._t = time.perf_counter()
        self._busy = procs.busy_cpu_ticks()
        self._own = _process_tree_ticks(os.getpid())

    def cores(self) -> float:
        """Average foreign CPU (cores) since :meth:`start`."""
        elapsed = time.perf_counter() - self._t
        if elapsed <= 0:
            return 0.0
        busy = procs.busy_cpu_ticks() - self._busy
        own = _process_tree_ticks(os.getpid()) - self._own
        return max(0.0, (busy - own) / procs.CLOCK_TICKS / elapsed)


def wait_for_quiet(threshold: float = 0.25, sample_s: float = 1.0, max_wait_s: float = 20.0
                   ) -> float:
    """Wait (up to ``max_wait_s``) until other processes use < ``threshold`` cores; return it."""
    deadline = time.monotonic() + max_wait_s
    while True:
        probe = ForeignLoad()
        time.sleep(sample_s)
        load = probe.cores()
        if load < threshold or time.monotonic() >= deadline:
            return load
