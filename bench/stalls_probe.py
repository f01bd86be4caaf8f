"""Probes for ``bench.stalls``: what the machine and the served processes are doing.

The CPU sampler (machine busy jiffies and this benchmark's per-process CPU ticks every 50 ms,
from ``/proc``), with its watchdog that takes thread states and ``py-spy`` dumps when no request
has completed for the stall gap; the sizes of the Python backend's shared-memory regions; the
load average; and the closed-loop steady load (:class:`Load`) that records each request's send
and receive time (:class:`Request`).
"""
from __future__ import annotations

import dataclasses
import os
import subprocess
import threading
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from towhee_rt.triton import procs

from .cpu_load import server_process_label

SAMPLE_S = 0.05
#: Watchdog dumps (thread states, py-spy) per run, at most.
MAX_DUMPS = 20


# ------------------------------------------------------------------------------ CPU sampler
def _machine_ticks() -> Tuple[int, int]:
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def _thread_states(pid: int) -> Dict[str, int]:
    """How many threads of ``pid`` are running (R), sleeping (S), in disk wait (D)..."""
    out: Dict[str, int] = {}
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            try:
                with open(f"/proc/{pid}/task/{tid}/stat") as f:
                    state = f.read().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            out[state] = out.get(state, 0) + 1
    except OSError:
        pass
    return out


def _label(pid: int, server_pid: int) -> str:
    return "client" if pid == os.getpid() else server_process_label(pid, server_pid)


class Sampler:
    """Every 50 ms: machine busy jiffies and this benchmark's per-process CPU ticks. A watchdog
    in the same thread takes thread states and py-spy dumps when no request has completed for
    ``gap`` seconds while requests are in flight."""

    def __init__(self, server_pid: int, load: "Load", gap: float, pyspy: Optional[str]):
        self.server_pid, self.load, self.gap, self.pyspy = server_pid, load, gap, pyspy
        self.samples: List[Tuple[int, int, int, Dict[str, int]]] = []
        self.dumps: List[Dict[str, Any]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._labels: Dict[int, str] = {}
        #: (t_ns, region, old bytes, new bytes) each time a Python-backend shared-memory
        #: region in /dev/shm changes size (the pool grows by shm-growth-byte-size).
        self.shm_growth: List[Tuple[int, str, int, int]] = []
        self._regions: Dict[str, str] = {}  # region name -> stub label
        self._shm: Dict[str, int] = {}

    def start(self) -> "Sampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=30)

    def _pids(self) -> List[int]:
        return [os.getpid()] + [s.pid for s in procs.process_tree(self.server_pid)]

    def _run(self) -> None:
        dumped_for = None
        while not self._stop.wait(SAMPLE_S):
            busy, _ = _machine_ticks()
            ticks = {}
            for pid in self._pids():
                stat = procs.proc_stat(pid)
                if stat is None:
                    continue
                if pid not in self._labels:
                    self._labels[pid] = _label(pid, self.server_pid)
                    argv = procs.cmdline(pid)
                    if self._labels[pid].startswith("stub") and len(argv) > 2:
                        self._regions[argv[2]] = self._labels[pid]
                label = self._labels[pid]
                ticks[label] = ticks.get(label, 0) + stat.cpu_ticks
            self.samples.append((time.monotonic_ns(), busy, 0, ticks))
            sizes = {k: v for k, v in shm_sizes().items() if k in self._regions}
            for name, size in sizes.items():
                if name in self._shm and size != self._shm[name]:
                    self.shm_growth.append((time.monotonic_ns(), self._regions[name],
                                            self._shm[name], size))
            self._shm = sizes
            last, inflight = self.load.last_completion_ns, self.load.in_flight
            if (inflight and last and time.monotonic_ns() - last > self.gap * 1e9
                    and dumped_for != last and len(self.dumps) < MAX_DUMPS):
                dumped_for = last
                self.dumps.append(self._dump())

    def _dump(self) -> Dict[str, Any]:
        """What tritonserver and the stubs are doing now (no completion for ``gap`` s)."""
        t = time.monotonic_ns()
        out: Dict[str, Any] = {"t_ns": t, "in_flight": self.load.in_flight,
                               "since_last_completion_ms":
                                   round((t - self.load.last_completion_ns) / 1e6),
                               "loadavg": loadavg(), "threads": {}, "py_spy": {}}
        for pid in self._pids()[1:]:
            label = self._labels.get(pid) or _label(pid, self.server_pid)
            out["threads"][label] = _thread_states(pid)
            if self.pyspy and label.startswith("stub"):
                try:
                    res = subprocess.run([self.pyspy, "dump", "--nonblocking", "--pid",
                                          str(pid)], capture_output=True, text=True,
                                         timeout=10)
                    out["py_spy"][label] = (res.stdout or res.stderr)[-3000:]
                except (OSError, subprocess.SubprocessError) as exc:
                    out["py_spy"][label] = f"py-spy failed: {exc}"
        return out

    def cpu_between(self, t0: int, t1: int) -> Dict[str, float]:
        """Cores used over [t0, t1] (monotonic ns): machine, each of ours, foreign."""
        # The samples inside, and the nearest on either side: a sampler slowed down by a
        # loaded machine may have none inside a short interval.
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        before = [s for s in self.samples if s[0] < t0]
        after = [s for s in self.samples if s[0] > t1]
        inside = before[-1:] + inside + after[:1]
        if len(inside) < 2:
            return {}
        a, b = inside[0], inside[-1]
        seconds = (b[0] - a[0]) / 1e9
        hz = procs.CLOCK_TICKS
        machine = (b[1] - a[1]) / hz / seconds
        ours = {k: (b[3].get(k, 0) - a[3].get(k, 0)) / hz / seconds for k in b[3]}
        out = {"machine": round(machine, 2)}
        out.update({k: round(v, 2) for k, v in sorted(ours.items(), key=lambda kv: -kv[1])
                    if v >= 0.01})
        out["foreign"] = round(max(0.0, machine - sum(ours.values())), 2)
        return out


def shm_sizes() -> Dict[str, int]:
    """Sizes of the Python backend's regions in /dev/shm (towhee_rt names them towhee_rt_*)."""
    out = {}
    try:
        with os.scandir("/dev/shm") as entries:
            for e in entries:
                if e.name.startswith("towhee_rt"):
                    try:
                        out[e.name] = e.stat().st_size
                    except OSError:
                        pass
    except OSError:
        pass
    return out


def loadavg() -> str:
    with open("/proc/loadavg") as f:
        return f.read().strip()


# --------------------------------------------------------------------------------- the load
@dataclasses.dataclass
class Request:
    index: int
    worker: int
    send_ns: int
    recv_ns: int = 0
    ok: bool = True
    error: str = ""


class Load:
    """``concurrency`` worker threads, each sending its next request as soon as its last one
    returns, for ``duration`` seconds or ``max_requests`` requests, whichever comes first."""

    def __init__(self, url: str, protocol: str, model: str, payloads: Sequence[bytes],
                 concurrency: int, duration: float, max_requests: int, timeout: float = 30.0):
        self.url, self.protocol, self.model = url, protocol, model
        self.payloads, self.concurrency = list(payloads), concurrency
        self.duration, self.max_requests, self.timeout = duration, max_requests, timeout
        self.requests: List[Request] = []
        self.in_flight = 0
        self.last_completion_ns = 0
        self._lock = threading.Lock()
        self._next = 0

    def _client(self):
        if self.protocol == "grpc":
            import tritonclient.grpc as module
        else:
            import tritonclient.http as module
        return module, module.InferenceServerClient(self.url, network_timeout=self.timeout) \
            if self.protocol == "http" else module.InferenceServerClient(self.url)

    def _input_spec(self) -> Tuple[str, int, str]:
        module, client = self._client()
        meta = client.get_model_metadata(self.model, **({"as_json": True}
                                                        if self.protocol == "grpc" else {}))
        spec = meta["inputs"][0]
        client.close()
        return spec["name"], len(spec["shape"]), meta["outputs"][0]["name"]

    def run(self) -> List[Request]:
        name, ndim, output = self._input_spec()
        deadline = time.monotonic() + self.duration
        self.last_completion_ns = time.monotonic_ns()
        threads = [threading.Thread(target=self._worker, args=(w, name, ndim, output, deadline),
                                    daemon=True) for w in range(self.concurrency)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(self.duration + self.timeout + 30)
        return sorted(self.requests, key=lambda r: r.send_ns)

    def _take(self) -> Optional[int]:
        with self._lock:
            if self._next >= self.max_requests:
                return None
            self._next += 1
            self.in_flight += 1
            return self._next - 1

    def _worker(self, worker: int, name: str, ndim: int, output: str, deadline: float) -> None:
        module, client = self._client()
        out = [module.InferRequestedOutput(output)]
        try:
            while time.monotonic() < deadline:
                index = self._take()
                if index is None:
                    return
                array = np.empty((1,) * ndim, dtype=np.object_)
                array.flat[0] = self.payloads[index % len(self.payloads)]
                tensor = module.InferInput(name, list(array.shape), "BYTES")
                tensor.set_data_from_numpy(array)
                req = Request(index, worker, time.monotonic_ns())
                try:
                    client.infer(self.model, [tensor], outputs=out,
                                 **({"client_timeout": self.timeout}
                                    if self.protocol == "grpc" else {}))
                except Exception as exc:  # noqa: BLE001 - recorded per request
                    req.ok, req.error = False, str(exc)[:200]
                req.recv_ns = time.monotonic_ns()
                with self._lock:
                    self.in_flight -= 1
                    self.last_completion_ns = req.recv_ns
                    self.requests.append(req)
        finally:
            client.close()
