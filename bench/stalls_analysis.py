"""Analysis for ``bench.stalls``: stalls in a run's timeline, and what the server reported.

:func:`find_stalls` finds the intervals with no completion while requests were in flight,
:func:`classify` tells a real stall from CPU starvation, :func:`summarize` gives a run's
throughput and latency figures; Triton's trace is read (:func:`read_trace`) and cut to a stall
(:func:`trace_excerpt`), and its per-model statistics are read and differenced over a run
(:func:`model_stats`, :func:`stats_delta`).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Sequence

import numpy as np

from .stalls_probe import Request

#: A stall: no completion for more than this many seconds while requests are in flight.
GAP_S = 0.3


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
