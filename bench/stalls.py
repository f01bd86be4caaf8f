"""Stalls under steady load: ``python -m bench.stalls`` (issue 23, item 1).

A closed loop keeps N requests in flight against a served pipeline (plain ``tritonclient``, gRPC
or HTTP, one item per request) and records each request's send and receive time on the client
(``time.monotonic_ns``, the clock Triton's trace timestamps use). A *stall* is an interval of
more than ``--gap`` seconds (0.3) in which no request completes while requests are in flight.
Each stall is printed with what was going on:

* CPU over the interval, sampled every 50 ms from ``/proc``: the machine's busy cores, this
  benchmark's processes (client, tritonserver, each stub) and everything else. A stall while
  the machine was mostly idle is a real stall; one while foreign processes held the cores is
  CPU starvation.
* thread states of tritonserver and the stubs, and ``py-spy dump`` of every stub, taken by a
  watchdog as soon as no completion has arrived for ``--gap`` seconds (py-spy: optional,
  ``pip install py-spy``).
* Triton's trace (``--trace-config level=TIMESTAMPS``; off with ``--no-trace``) of the
  requests in flight during the stall, per step: queue, compute start/end.

Triton's statistics (queue vs compute ns per model) are read before and after each run.

Runs: ``--matrix`` is the search where stalls were reported (resnet18 fp32 ONNX, random
weights, one decode instance; 4/8/16 in flight; with and without dynamic batching; gRPC and
HTTP). Without it, each pipeline of ``--pipelines`` (resnet50, clip, minilm: random-weight image
models, real MiniLM) runs at its throughput point with the defaults, ``--duration`` seconds each
(``--duration 120``: the 2-minute target run). ``--compare gc`` runs each point twice: the
stubs' garbage collection as it is, and frozen after the model loads (patched into the
temporary repository's ``model.py`` copies, not into towhee_rt). Every run logs the stubs'
collections of generation 2 (and any over 5 ms) and the growth of their shared-memory pools.
Writes ``bench/results/stalls.json`` and ``stalls.md`` (``--out``).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

from towhee_rt.triton import procs

from .common import RESULTS_DIR, base_items, machine_info

GAP_S = 0.3
SAMPLE_S = 0.05
#: Watchdog dumps (thread states, py-spy) per run, at most.
MAX_DUMPS = 20
#: Concurrency of each pipeline's throughput point (where the 2-core machine is saturated).
THROUGHPUT_POINT = {"resnet18": 8, "resnet50": 8, "clip": 8, "minilm": 16}


# ---------------------------------------------------------------------------- the pipelines
def build_pipe(pipeline: str, dynamic_batching: bool, min_side: Optional[int] = None):
    """The served pipeline: one decode instance; the model step with the builder's defaults
    (ONNX fp32, random weights for the image models), dynamic batching on or off."""
    import towhee_rt as towhee

    model_config = {"dynamic_batching": True} if dynamic_batching else {}
    builder = towhee.dummy_input().pipeline_config(format_priority=["onnx"])
    if pipeline == "minilm":
        return builder.text_embedding.sentence_transformers(
            op_config=model_config).as_function()
    decode = {"min_side": min_side} if min_side else {}
    builder = builder.image_decode.cv2_rgb(op_config={"instance_count": 1}, **decode)
    if pipeline in ("resnet18", "resnet50"):
        builder = builder.image_embedding.timm(model_name=pipeline, pretrained=False,
                                               op_config=model_config)
    elif pipeline == "clip":
        builder = builder.image_text_embedding.clip_image(
            model_name="clip_vit_base_patch32", pretrained=False, op_config=model_config)
    else:
        raise ValueError(f"unknown pipeline {pipeline!r}")
    return builder.as_function()


def items(pipeline: str) -> List[bytes]:
    base = base_items("minilm" if pipeline == "minilm" else "resnet50")
    return [b.encode() if isinstance(b, str) else b for b in base]


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
    if pid == os.getpid():
        return "client"
    if pid == server_pid:
        return "tritonserver"
    stub = procs.parse_stub(pid, procs.cmdline(pid))
    return f"stub {stub.instance}" if stub is not None else f"pid {pid}"


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
            sizes = {k: v for k, v in _shm_sizes().items() if k in self._regions}
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
                               "loadavg": _loadavg(), "threads": {}, "py_spy": {}}
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


def _shm_sizes() -> Dict[str, int]:
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


def _loadavg() -> str:
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


# ------------------------------------------------------------------------------ the analysis
def find_stalls(requests: Sequence[Request], gap: float = GAP_S) -> List[Dict[str, Any]]:
    """Intervals longer than ``gap`` s with no completion while requests were in flight.

    An interval runs from one completion (or the first send) to the next completion; requests in
    flight are those sent before its end and received after its start.
    """
    if not requests:
        return []
    ends = sorted(r.recv_ns for r in requests)
    marks = [min(r.send_ns for r in requests)] + ends
    out = []
    for a, b in zip(marks, marks[1:]):
        if (b - a) / 1e9 <= gap:
            continue
        waiting = [r for r in requests if r.send_ns < b and r.recv_ns > a]
        if waiting:
            out.append({"start_ns": a, "end_ns": b, "ms": round((b - a) / 1e6),
                        "in_flight": len(waiting),
                        "waiting_ms": sorted(round((r.recv_ns - r.send_ns) / 1e6)
                                             for r in waiting),
                        "indices": [r.index for r in waiting]})
    return out


def classify(cpu: Dict[str, float], cores: int) -> str:
    """'real stall' when the machine was mostly idle, 'CPU starvation' when foreign processes
    held most of the cores, 'busy (ours)' when our own processes did."""
    if not cpu:
        return "unknown (no CPU samples)"
    if cpu["machine"] < 0.5 * cores:
        return "real stall (CPU mostly idle)"
    if cpu.get("foreign", 0) >= 0.5 * cpu["machine"]:
        return "CPU starvation (foreign load)"
    return "busy (our processes)"


def summarize(requests: Sequence[Request]) -> Dict[str, Any]:
    ok = [r for r in requests if r.ok]
    lat = np.asarray([(r.recv_ns - r.send_ns) / 1e6 for r in ok]) if ok else np.zeros(1)
    span = ((max(r.recv_ns for r in requests) - min(r.send_ns for r in requests)) / 1e9
            if requests else 0.0)
    return {"requests": len(requests), "failed": len(requests) - len(ok),
            "seconds": round(span, 1),
            "items_per_s": round(len(ok) / span, 1) if span else 0.0,
            "p50_ms": round(float(np.percentile(lat, 50)), 1),
            "p99_ms": round(float(np.percentile(lat, 99)), 1),
            "max_ms": round(float(lat.max()), 1),
            "over_1s": int((lat > 1000).sum()),
            "p99_over_p50": round(float(np.percentile(lat, 99) / np.percentile(lat, 50)), 2)}


def trace_excerpt(trace: List[Dict[str, Any]], t0: int, t1: int, limit: int = 12
                  ) -> List[str]:
    """One line per model step that was queued or computing in [t0, t1] (monotonic ns):
    its QUEUE_START / COMPUTE_START / COMPUTE_END relative to t0, in ms."""
    lines = []
    for entry in trace:
        stamps = {s["name"]: int(s["ns"]) for s in entry.get("timestamps", [])}
        start, end = stamps.get("REQUEST_START"), stamps.get("REQUEST_END")
        if start is None or end is None or end < t0 or start > t1:
            continue
        rel = {k: round((v - t0) / 1e6) for k, v in stamps.items()
               if k in ("REQUEST_START", "QUEUE_START", "COMPUTE_START", "COMPUTE_END",
                        "REQUEST_END")}
        lines.append(f"{entry.get('model_name', '?')} id={entry.get('id')} "
                     f"parent={entry.get('parent_id', '-')}: " +
                     " ".join(f"{k.lower()}={v}" for k, v in rel.items()))
    return lines[:limit]


def read_trace(path: Path) -> List[Dict[str, Any]]:
    """Triton's trace file(s) (a JSON array each), merged by trace id."""
    merged: Dict[Any, Dict[str, Any]] = {}
    for file in sorted(path.parent.glob(path.name + "*")):
        try:
            entries = json.loads(file.read_text() or "[]")
        except ValueError:
            continue
        for e in entries:
            m = merged.setdefault(e["id"], {"id": e["id"], "timestamps": []})
            for k in ("model_name", "parent_id"):
                if k in e:
                    m[k] = e[k]
            m["timestamps"] += e.get("timestamps", [])
    return list(merged.values())


# ---------------------------------------------------------------------------- the statistics
def model_stats(url: str, admin_headers: Dict[str, str]) -> Dict[str, Dict[str, int]]:
    """Per model: success count and cumulative queue / compute input / infer / output ns."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        stats = client.get_inference_statistics(headers=admin_headers, as_json=True)
    finally:
        client.close()
    out = {}
    for m in stats.get("model_stats", []):
        s = m.get("inference_stats", {})
        out[m["name"]] = {"count": int(s.get("success", {}).get("count", 0)),
                          **{k: int(s.get(k, {}).get("ns", 0))
                             for k in ("queue", "compute_input", "compute_infer",
                                       "compute_output")},
                          "executions": int(m.get("execution_count", 0))}
    return out


def stats_delta(before, after) -> Dict[str, Dict[str, float]]:
    """Per model over a run: requests, executions and mean ms per request of each phase."""
    out = {}
    for name, a in after.items():
        b = before.get(name, {})
        n = a["count"] - b.get("count", 0)
        if n <= 0:
            continue
        out[name] = {"requests": n, "executions": a["executions"] - b.get("executions", 0),
                     **{f"{k}_ms": round((a[k] - b.get(k, 0)) / n / 1e6, 2)
                        for k in ("queue", "compute_input", "compute_infer",
                                  "compute_output")}}
    return out


# ---------------------------------------------------------------------------------- one run
@dataclasses.dataclass(frozen=True)
class RunConfig:
    pipeline: str
    concurrency: int
    protocol: str = "grpc"
    dynamic_batching: bool = False
    min_side: Optional[int] = None
    #: "default", or "freeze": an experiment patched into the repository's model.py copies
    #: (gc.collect() + gc.freeze() after initialize), see :func:`patch_stubs`.
    stub_gc: str = "default"
    #: An experiment: the model step's dynamic batcher gets ``preferred_batch_size: N`` (written
    #: into the temporary repository's config.pbtxt), so an instance that frees up takes N
    #: queued requests instead of all of them. None: as built.
    preferred_batch: Optional[int] = None

    @property
    def server_key(self):
        return (self.pipeline, self.dynamic_batching, self.min_side, self.stub_gc,
                self.preferred_batch)

    def label(self) -> str:
        return (f"{self.pipeline} {self.protocol} {self.concurrency} in flight, "
                f"batching {'on' if self.dynamic_batching else 'off'}"
                + (f", min_side={self.min_side}" if self.min_side else "")
                + (f", stub gc={self.stub_gc}" if self.stub_gc != "default" else "")
                + (f", model step preferred_batch_size={self.preferred_batch}"
                   if self.preferred_batch else ""))


#: Appended to each model.py copy of the (temporary) repository: every collection of generation
#: 2, and any other over 5 ms, is logged as "pid instance start_ns ms generation collected".
GC_LOG_PATCH = """

# --- bench.stalls: garbage-collection log (experiment, not part of towhee_rt) ---
import gc as _stalls_gc
_STALLS_GC_LOG = os.environ.get("TOWHEE_STALLS_GC_LOG")
_stalls_start = [0]


def _stalls_gc_callback(phase, info):
    if phase == "start":
        _stalls_start[0] = time.monotonic_ns()
        return
    took = time.monotonic_ns() - _stalls_start[0]
    if _STALLS_GC_LOG and (info["generation"] == 2 or took > 5_000_000):
        with open(_STALLS_GC_LOG, "a") as f:
            f.write(f"{os.getpid()} {_stalls_start[0]} {took / 1e6:.1f} {info['generation']} "
                    f"{info['collected']}\\n")


_stalls_gc.callbacks.append(_stalls_gc_callback)
"""
#: Appended after GC_LOG_PATCH for ``stub_gc='freeze'``: after the model has loaded, one full
#: collection, then everything alive moves to the permanent generation (gc.freeze), so later
#: collections no longer traverse the hundreds of thousands of objects torch and timm import.
GC_FREEZE_PATCH = """
_stalls_initialize = TritonPythonModel.initialize


def _stalls_frozen_initialize(self, args):
    _stalls_initialize(self, args)
    _stalls_gc.collect()
    _stalls_gc.freeze()


TritonPythonModel.initialize = _stalls_frozen_initialize
"""


def patch_stubs(repo: Path, stub_gc: str) -> None:
    """Append the GC log (and, for ``stub_gc='freeze'``, the freeze) to each model.py copy of
    the temporary repository ``repo``: an experiment measured without changing towhee_rt."""
    for model_py in sorted(repo.glob("*/1/model.py")):
        text = model_py.read_text() + GC_LOG_PATCH
        if stub_gc == "freeze":
            text += GC_FREEZE_PATCH
        model_py.write_text(text)


def patch_preferred_batch(repo: Path, size: int) -> str:
    """Give the last step's dynamic batcher ``preferred_batch_size: size`` in the temporary
    repository ``repo`` (an experiment); returns the model patched."""
    configs = sorted(p for p in repo.glob("*/config.pbtxt") if "ensemble_scheduling"
                     not in p.read_text())
    target = configs[-1]  # steps are named <pipeline>_<index>_...: the last is the model
    text = target.read_text()
    if "dynamic_batching {" not in text:
        raise RuntimeError(f"{target}: no dynamic_batching block to patch")
    target.write_text(text.replace("dynamic_batching {",
                                   f"dynamic_batching {{\n  preferred_batch_size: {size}", 1))
    return target.parent.name


def read_gc_log(path: Path) -> List[Tuple[int, int, float, int, int]]:
    """(pid, start_ns, ms, generation, collected) of each logged collection."""
    out = []
    if path.exists():
        for line in path.read_text().splitlines():
            parts = line.split()
            if len(parts) == 5:
                out.append((int(parts[0]), int(parts[1]), float(parts[2]), int(parts[3]),
                            int(parts[4])))
    return out


def run_server(configs: Sequence[RunConfig], args, workdir: Path) -> List[Dict[str, Any]]:
    """Build and serve one repository, then run every config of it in turn."""
    import towhee_rt as towhee

    first = configs[0]
    pipe = build_pipe(first.pipeline, first.dynamic_batching, first.min_side)
    repo = towhee.build_model_repo(pipe, workdir / "repo", overwrite=True)
    gc_log = workdir / "gc.log"
    patch_stubs(Path(repo.path), first.stub_gc)
    if first.preferred_batch:
        patch_preferred_batch(Path(repo.path), first.preferred_batch)
    trace_file = workdir / "trace.json"
    extra = []
    if args.trace:
        extra += [f"--trace-config=triton,file={trace_file}", "--trace-config=level=TIMESTAMPS",
                  "--trace-config=rate=1", "--trace-config=count=-1",
                  # flushed every 20 traces (trace.json.0, .1, ...): a stop cut short loses
                  # only the tail
                  "--trace-config=log-frequency=20"]
    payloads = items(first.pipeline)
    results = []
    admin_key = "stalls-bench-admin"
    with towhee.serve(repo.path, grpc_port=0, http_port=0, metrics_port=0, admin_key=admin_key,
                      log_file=workdir / "tritonserver.log", extra_args=extra,
                      env={"TOWHEE_STALLS_GC_LOG": str(gc_log)}) as server:
        admin = {"triton-grpc-protocol-towhee-admin-key": admin_key}
        urls = {"grpc": server.grpc_url, "http": server.http_url}
        for cfg in configs:
            load = Load(urls[cfg.protocol], cfg.protocol, repo.model_name, payloads,
                        cfg.concurrency, args.warmup, 4 * cfg.concurrency)
            load.run()  # warm-up: stubs, shm pools, connections
            load = Load(urls[cfg.protocol], cfg.protocol, repo.model_name, payloads,
                        cfg.concurrency, args.duration, args.max_requests)
            sampler = Sampler(server.pid, load, args.gap, args.pyspy)
            before = model_stats(server.grpc_url, admin)
            uptime_before = _loadavg()
            sampler.start()
            requests = load.run()
            sampler.stop()
            after = model_stats(server.grpc_url, admin)
            labels = dict(sampler._labels)
            results.append({"config": dataclasses.asdict(cfg), "label": cfg.label(),
                            "loadavg_before": uptime_before, "loadavg_after": _loadavg(),
                            "summary": summarize(requests),
                            "cpu": sampler.cpu_between(requests[0].send_ns,
                                                       requests[-1].recv_ns)
                            if requests else {},
                            "stats": stats_delta(before, after),
                            "shm_mib_after": {sampler._regions[k]: v / 2 ** 20 for k, v
                                              in _shm_sizes().items() if k in sampler._regions},
                            "shm_growth": [(round((t - requests[0].send_ns) / 1e6), name, a, b)
                                           for t, name, a, b in sampler.shm_growth]
                            if requests else [],
                            "_requests": requests, "_sampler": sampler, "_labels": labels})
            print(_line(results[-1]), flush=True)
    trace = read_trace(trace_file) if args.trace else []
    gcs = read_gc_log(gc_log)
    cores = os.cpu_count() or 1
    for res in results:
        sampler, requests = res.pop("_sampler"), res.pop("_requests")
        labels = res.pop("_labels")
        t_first = requests[0].send_ns if requests else 0
        t_last = requests[-1].recv_ns if requests else 0
        run_gcs = [g for g in gcs if t_first <= g[1] <= t_last]
        res["gc"] = {"gen2_count": sum(1 for g in run_gcs if g[3] == 2),
                     "gen2_max_ms": max([g[2] for g in run_gcs if g[3] == 2], default=0.0),
                     "over_5ms_count": len(run_gcs),
                     "ms_total": round(sum(g[2] for g in run_gcs), 1),
                     "max_ms": max([g[2] for g in run_gcs], default=0.0)}
        stalls = find_stalls(requests, args.gap)
        for st in stalls:
            st["cpu"] = sampler.cpu_between(st["start_ns"], st["end_ns"])
            st["kind"] = classify(st["cpu"], cores)
            st["dumps"] = [d for d in sampler.dumps if st["start_ns"] <= d["t_ns"] <= st["end_ns"]]
            if trace:
                st["trace"] = trace_excerpt(trace, st["start_ns"], st["end_ns"])
            st["gc"] = [f"{labels.get(g[0], g[0])}: gen{g[3]} {g[2]} ms at "
                        f"+{(g[1] - st['start_ns']) / 1e6:.0f} ms"
                        for g in run_gcs if st["start_ns"] - 1e9 <= g[1] <= st["end_ns"]]
        res["stalls"] = stalls
        t0 = requests[0].send_ns if requests else 0
        res["timeline"] = [[r.index, r.worker, round((r.send_ns - t0) / 1e6, 1),
                            round((r.recv_ns - t0) / 1e6, 1), r.ok] for r in requests]
        res["t0_ns"] = t0
    return results


def _line(res: Dict[str, Any]) -> str:
    s = res["summary"]
    return (f"{res['label']}: {s['requests']} req in {s['seconds']} s, {s['items_per_s']}/s, "
            f"p50 {s['p50_ms']} p99 {s['p99_ms']} max {s['max_ms']} ms "
            f"(p99/p50 {s['p99_over_p50']}, >1s {s['over_1s']}, failed {s['failed']}); "
            f"cpu {res['cpu']}; load {res['loadavg_before']}")


# ------------------------------------------------------------------------------- the configs
#: What ``--compare`` runs each point under: the stubs' garbage collection as it is, and
#: frozen after the model loads (an experiment patched into the repository's copies).
VARIANTS = {"none": ("default",), "gc": ("default", "freeze")}
#: ``--compare batch``: each point as built, and with the model step's preferred batch size 1.
BATCH_VARIANTS = (None, 1)


def matrix_configs(variants: Sequence[str]) -> List[RunConfig]:
    """Where stalls were reported: resnet18 fp32, one decode instance, 4/8/16 in flight,
    batching off/on, gRPC and HTTP."""
    return [RunConfig("resnet18", n, proto, batching, stub_gc=g)
            for g in variants for batching in (False, True) for proto in ("grpc", "http")
            for n in (4, 8, 16)]


def target_configs(pipelines: Sequence[str], variants: Sequence[str],
                   concurrency: Sequence[int] = (), protocols: Sequence[str] = ("grpc",),
                   batching: Sequence[bool] = (False,),
                   preferred: Sequence[Optional[int]] = (None,)) -> List[RunConfig]:
    """Each pipeline at its throughput point (or at each of ``concurrency``), gRPC unless
    ``protocols`` says otherwise, with the defaults (dynamic batching off) unless ``batching``
    says otherwise."""
    return [RunConfig(p, n, proto, b, stub_gc=g, preferred_batch=pb)
            for p in pipelines for g in variants for pb in preferred for b in batching
            for proto in protocols for n in (concurrency or (THROUGHPUT_POINT[p],))]


def group_by_server(configs: Sequence[RunConfig]) -> List[List[RunConfig]]:
    groups: Dict[Any, List[RunConfig]] = {}
    for c in configs:
        groups.setdefault(c.server_key, []).append(c)
    return list(groups.values())


# ------------------------------------------------------------------------------- the report
def write_report(results: List[Dict[str, Any]], args, out: Path,
                 failures: Sequence[Dict[str, str]] = ()) -> None:
    """``out``.json (everything, timelines included) and ``out``.md (tables and excerpts)."""
    if args.report_from:
        doc = json.loads(Path(args.report_from).read_text())
        info, command = doc["machine"], doc.get("command", "")
    else:
        info, command = machine_info(), " ".join(sys.argv[1:])
        doc = {"machine": info, "command": command,
               "args": {k: v for k, v in vars(args).items() if k != "func"},
               "gap_s": args.gap, "runs": results, "failed_servers": list(failures)}
    Path(f"{out}.json").write_text(json.dumps(doc, indent=1, default=str))
    lines = [f"# Stalls under steady load ({info['date']})", "",
             f"`python -m bench.stalls {command}`; {info['cpu']}, "
             f"{info['cores']} cores; a stall: no completion for > {args.gap * 1000:.0f} ms "
             "with requests in flight. CPU in cores (machine / ours by process / foreign).", "",
             "| run | items/s | p50 ms | p99 ms | max ms | p99/p50 | >1 s | stalls "
             "(real / starved / busy) | stub gen-2 GCs (max ms) | loadavg |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        s = r["summary"]
        real = sum(1 for st in r["stalls"] if st["kind"].startswith("real"))
        starved = sum(1 for st in r["stalls"] if st["kind"].startswith("CPU"))
        busy = sum(1 for st in r["stalls"] if st["kind"].startswith("busy"))
        lines.append(f"| {r['label']} | {s['items_per_s']} | {s['p50_ms']} | {s['p99_ms']} | "
                     f"{s['max_ms']} | {s['p99_over_p50']} | {s['over_1s']} | "
                     f"{len(r['stalls'])} ({real} / {starved} / {busy}) | {r['gc']['gen2_count']} "
                     f"({r['gc']['gen2_max_ms']}) | {r['loadavg_before']} |")
    for f in failures:
        lines.append(f"| {f['label']} | server failed: {f['error'][:300]} |")
    lines += ["", "## Per run: statistics and stalls", ""]
    for r in results:
        lines.append(f"### {r['label']}")
        lines.append(f"CPU over the run: {r['cpu']}; stub GCs (gen 2, or over 5 ms): {r['gc']}; "
                     f"shared-memory pool growths (ms into the run, region, bytes before, "
                     f"after): {r['shm_growth'] or 'none'}; pool sizes after the run (MiB): "
                     f"{r['shm_mib_after']}")
        for model, st in r["stats"].items():
            lines.append(f"- `{model}`: {st}")
        kinds: Dict[str, int] = {}
        for st in r["stalls"]:
            kinds[st["kind"]] = kinds.get(st["kind"], 0) + 1
        lines.append(f"Stalls: {len(r['stalls'])} {kinds or ''}; the longest "
                     f"{min(3, len(r['stalls']))} (all in the JSON):")
        shown_dump = False
        for st in sorted(r["stalls"], key=lambda st: -st["ms"])[:3]:
            t0 = r["t0_ns"]
            lines.append(f"- stall at {(st['start_ns'] - t0) / 1e6:.0f} ms for {st['ms']} ms, "
                         f"{st['in_flight']} in flight (their latencies "
                         f"{st['waiting_ms']} ms): **{st['kind']}**, CPU {st['cpu']}")
            for d in st.get("dumps", [])[:1]:
                lines.append(f"  - watchdog at +{d['since_last_completion_ms']} ms: threads "
                             f"{d['threads']}, loadavg {d['loadavg']}")
                if shown_dump:
                    continue
                shown_dump = True
                for label, text in list(d["py_spy"].items())[:3]:
                    body = "\n".join("    " + ln for ln in text.strip().splitlines()[3:12])
                    lines.append(f"  - py-spy {label}:\n\n```\n{body}\n```")
            for g in st.get("gc", [])[:6]:
                lines.append(f"  - stub GC: {g}")
            for tl in st.get("trace", [])[:6]:
                lines.append(f"  - trace: {tl}")
        lines.append("")
    if args.notes and Path(args.notes).exists():
        lines += ["## Findings", "", Path(args.notes).read_text()]
    Path(f"{out}.md").write_text("\n".join(lines) + "\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m bench.stalls", description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=float, default=20.0,
                    help="seconds of steady load per run (the target run: 120)")
    ap.add_argument("--max-requests", type=int, default=20000, help="requests per run, at most")
    ap.add_argument("--warmup", type=float, default=3.0, help="seconds of warm-up per run")
    ap.add_argument("--gap", type=float, default=GAP_S, help="stall threshold, seconds")
    ap.add_argument("--matrix", action="store_true",
                    help="the search: resnet18, 4/8/16 in flight, batching off/on, gRPC/HTTP")
    ap.add_argument("--pipelines", default="resnet50,clip,minilm")
    ap.add_argument("--concurrency", default="",
                    help="requests in flight, e.g. 8,16 (default: each pipeline's throughput "
                         "point)")
    ap.add_argument("--protocols", default="grpc", help="grpc, http or grpc,http")
    ap.add_argument("--batching", default="off", help="dynamic batching: off, on or off,on")
    ap.add_argument("--compare", choices=sorted(VARIANTS) + ["batch"], default="none",
                    help="gc: each point with the stubs' garbage collection as it is and frozen "
                         "after the model loads; batch: as built and with the model step's "
                         "preferred_batch_size 1 (both patched into the temporary repository)")
    ap.add_argument("--trace", action=argparse.BooleanOptionalAction, default=True,
                    help="Triton's trace of every request (level TIMESTAMPS); on by default")
    ap.add_argument("--pyspy", default=shutil.which("py-spy") or
                    str(Path(sys.executable).parent / "py-spy"))
    ap.add_argument("--out", default=str(RESULTS_DIR / "stalls"))
    ap.add_argument("--notes", default=str(RESULTS_DIR / "stalls.findings.md"),
                    help="markdown appended to the report as its findings")
    ap.add_argument("--report-from", default=None,
                    help="write --out's report again from a JSON this script wrote (e.g. after "
                         "editing the findings), without running anything")
    args = ap.parse_args(argv)
    if args.report_from:
        doc = json.loads(Path(args.report_from).read_text())
        args.gap = doc.get("gap_s", args.gap)
        write_report(doc["runs"], args, Path(args.out), doc.get("failed_servers", []))
        print(f"wrote {args.out}.md / .json")
        return 0
    if args.duration > 600 or args.duration <= 0:
        ap.error("--duration must be in (0, 600] seconds")
    if not Path(args.pyspy).exists():
        print("py-spy not found: stalls are reported without stack dumps", file=sys.stderr)
        args.pyspy = None
    variants = VARIANTS.get(args.compare, VARIANTS["none"])
    preferred = BATCH_VARIANTS if args.compare == "batch" else (None,)
    configs = (matrix_configs(variants) if args.matrix else
               target_configs([p for p in args.pipelines.split(",") if p], variants,
                              [int(n) for n in args.concurrency.split(",") if n],
                              [p for p in args.protocols.split(",") if p],
                              [b == "on" for b in args.batching.split(",") if b], preferred))
    results: List[Dict[str, Any]] = []
    failures: List[Dict[str, str]] = []
    for group in group_by_server(configs):
        work = Path(tempfile.mkdtemp(prefix="stalls-"))
        try:
            results += run_server(group, args, work)
        except Exception as exc:  # noqa: BLE001 - one server failing must not lose the rest
            print(f"FAILED {group[0].label()}: {exc}", file=sys.stderr)
            failures.append({"label": group[0].label(), "error": str(exc)[:2000]})
        finally:
            shutil.rmtree(work, ignore_errors=True)
    write_report(results, args, Path(args.out), failures)
    for r in results:
        for st in r["stalls"]:
            print(f"STALL {r['label']}: {st['ms']} ms, {st['in_flight']} in flight, "
                  f"{st['kind']}, cpu {st['cpu']}, gc {st.get('gc')}")
        print(f"GC {r['label']}: {r['gc']}")
    print(f"wrote {args.out}.md / .json")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
