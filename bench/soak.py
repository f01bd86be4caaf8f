"""Soak: mixed good and bad load on the served resnet50 pipeline, one stub kill, one burst.

    python -m bench.soak [--minutes 10] [--clients 4] [--kill-at 180] [--burst-at 360]
                         [--burst-s 30] [--burst-clients 24] [--out soak]

The pipeline (``cv2_rgb -> timm resnet50``, ONNX, served defaults) runs on the embedded
tritonserver on 127.0.0.1. ``--clients`` threads send one item per request for ``--minutes``:
the shared good images and, one request in eight, a bad file. Every answer is checked against
the local run of the same item (a vector for another image, a missing or a doubled answer would
be counted as lost, duplicated or misordered). At ``--kill-at`` seconds one model stub is
SIGKILLed; at ``--burst-at`` ``--burst-clients`` more threads join for ``--burst-s`` seconds.
Every 2 s the server's processes are sampled (anonymous RSS, RssAnon, of tritonserver and of
each stub, and our /dev/shm regions); the report gives each process's growth against the target
(:data:`GROWTH_TARGET_MIB`, issue 23) and the .png its curve. Writes
``bench/results/<out>.md``, ``.json`` (with the samples) and ``.png`` (``--out soak``).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from towhee_rt.triton import procs

from .common import RESULTS_DIR, build_pipeline, image_files, machine_info, machine_line
from .cpu_load import server_process_label

BAD_DIR = Path(__file__).resolve().parents[2] / "shared" / "testdata" / "images" / "bad"
BAD_FILES = ("empty.jpg", "not_an_image.jpg", "truncated.jpg", "bomb_50000x50000.png")
TOLERANCE = 1e-4
SAMPLE_S = 2.0
#: issue 23: no process of the server may grow its private memory (RssAnon) more than this
#: over the soak (bench/results/memory.md).
GROWTH_TARGET_MIB = 64


class Ledger:
    """Every request sent and what came back (thread-safe)."""

    def __init__(self, start: float):
        self.start = start
        self.rows: List[Dict[str, Any]] = []
        self._lock = threading.Lock()

    def add(self, **row: Any) -> None:
        with self._lock:
            self.rows.append(row)


def _classify(outcome: Any, expected: Optional[np.ndarray]) -> str:
    """ok / rejected_bad (a bad item named as such) / wrong / busy / timeout / unavailable /
    error:<type> (anything else: an unexpected failure)."""
    from towhee_rt.errors import BadInputError, ItemError, ServerUnavailableError

    if isinstance(outcome, ServerUnavailableError):
        return "unavailable"
    if isinstance(outcome, ItemError) and outcome.kind in ("busy", "timeout"):
        return outcome.kind
    if isinstance(outcome, BadInputError) and expected is None:
        return "rejected_bad"
    if isinstance(outcome, BaseException):
        return f"error:{type(outcome).__name__}"
    if expected is None:
        return "wrong"  # a bad file answered with a vector
    scale = float(np.max(np.abs(expected))) or 1.0
    return "ok" if float(np.max(np.abs(outcome - expected))) / scale <= TOLERANCE else "wrong"


def _client_loop(url: str, items: List[Any], references: List[Optional[np.ndarray]],
                 ledger: Ledger, stop_at: float, offset: int, burst: bool = False) -> None:
    import towhee_rt as towhee

    with towhee.Client(url, timeout=30.0) as client:
        k = offset
        while time.monotonic() < stop_at:
            index = k % len(items)
            k += 1
            sent = time.monotonic()
            try:
                (outcome,) = client.infer([items[index]], errors="return")
            except Exception as exc:  # noqa: BLE001 - recorded, the loop goes on
                outcome = exc
            ledger.add(t=sent - ledger.start, latency=time.monotonic() - sent, item=index,
                       outcome=_classify(outcome, references[index]), burst=burst)


def _sample(server_pid: int) -> Dict[str, Any]:
    """Anonymous RSS of tritonserver and its stubs (in all, and per process: a stub killed and
    started again keeps its instance's label), and the size of our /dev/shm regions."""
    per_process: Dict[str, float] = {}
    for member in procs.group_members(server_pid):
        label = server_process_label(member.pid, server_pid)
        per_process[label] = per_process.get(label, 0.0) + \
            procs.resident_kib(member.pid)[0] / 1024
    shm = 0
    for name in procs.regions("towhee_rt_"):  # the regions of servers towhee_rt started
        try:
            shm += os.path.getsize(os.path.join("/dev/shm", name))
        except OSError:
            continue
    return {"rss_anon_mib": sum(per_process.values()), "shm_mib": shm / 2**20,
            "rss_anon_by_process": per_process}


def memory_growth(samples: List[Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
    """Per process: RssAnon (MiB) first, last and max, and growth (last - first), the figure
    the target (:data:`GROWTH_TARGET_MIB`) applies to."""
    labels = sorted({k for s in samples for k in s.get("rss_anon_by_process", {})})
    out = {}
    for label in labels:
        series = [s["rss_anon_by_process"][label] for s in samples
                  if label in s.get("rss_anon_by_process", {})]
        out[label] = {"first": series[0], "last": series[-1], "max": max(series),
                      "growth": series[-1] - series[0]}
    return out


def _kill_one_model_stub(server_pid: int) -> Optional[int]:
    for member in procs.group_members(server_pid):
        stub = procs.parse_stub(member.pid, procs.cmdline(member.pid))
        if stub is not None and "image_embedding_timm" in stub.model:
            os.kill(stub.pid, signal.SIGKILL)
            return stub.pid
    return None


def run(minutes: float, clients: int, kill_at: float, burst_at: float, burst_s: float,
        burst_clients: int) -> Dict[str, Any]:
    """Serve, load, kill, burst, sample; return the raw ledger and samples."""
    import towhee_rt as towhee

    good = image_files()
    items: List[Any] = [str(p) for p in good] + [str(BAD_DIR / b) for b in BAD_FILES]
    pipe = build_pipeline("resnet50", fmt="onnx")
    local = pipe([str(p) for p in good])
    references: List[Optional[np.ndarray]] = list(local) + [None] * len(BAD_FILES)
    # One request in eight is bad: weight the good items.
    order = [i for i in range(len(good)) for _ in range(2)] + \
        list(range(len(good), len(items)))
    items, references = [items[i] for i in order], [references[i] for i in order]
    duration = minutes * 60
    with tempfile.TemporaryDirectory(prefix="bench-soak-") as tmp:
        repo = towhee.build_model_repo(pipe, Path(tmp) / "repo")
        with towhee.serve(repo.path, grpc_port=0, http_port=0, metrics_port=0,
                          log_file=Path(tmp) / "tritonserver.log") as server:
            start, start_epoch = time.monotonic(), time.time()
            ledger, samples, events = Ledger(start), [], []
            stop_at = start + duration
            threads = [threading.Thread(target=_client_loop, args=(
                server.grpc_url, items, references, ledger, stop_at, 7 * n))
                for n in range(clients)]
            for thread in threads:
                thread.start()
            killed = burst_started = False
            while time.monotonic() < stop_at:
                now = time.monotonic() - start
                samples.append({"t": now, **_sample(server.pid)})
                if not killed and now >= kill_at:
                    killed = True
                    events.append({"t": now, "event": "stub killed",
                                   "pid": _kill_one_model_stub(server.pid)})
                if not burst_started and now >= burst_at:
                    burst_started = True
                    events.append({"t": now, "event": f"burst of {burst_clients} clients"})
                    end = min(stop_at, time.monotonic() + burst_s)
                    threads += [threading.Thread(target=_client_loop, args=(
                        server.grpc_url, items, references, ledger, end, 11 * n, True))
                        for n in range(burst_clients)]
                    for thread in threads[-burst_clients:]:
                        thread.start()
                time.sleep(SAMPLE_S)
            for thread in threads:
                thread.join(60)
            events += [{"t": e["time"] - start_epoch, "event": f"{e['event']}: {e['message']}"}
                       for e in getattr(server, "events", []) if e["time"] >= start_epoch]
    return {"rows": ledger.rows, "samples": samples, "events": events}


def summarise(raw: Dict[str, Any], kill_at: float) -> Dict[str, Any]:
    """Totals, per-minute p50/p99, recovery time."""
    rows = raw["rows"]
    counts = Counter(r["outcome"] for r in rows)
    minutes = []
    for minute in range(int(max((r["t"] for r in rows), default=0) // 60) + 1):
        ok = sorted(r["latency"] * 1000 for r in rows
                    if r["outcome"] == "ok" and minute * 60 <= r["t"] < (minute + 1) * 60)
        window = Counter(r["outcome"] for r in rows if minute * 60 <= r["t"] < (minute + 1) * 60)
        minutes.append({"minute": minute + 1, "requests": sum(window.values()),
                        "ok": window["ok"], "not ok": sum(window.values()) - window["ok"]
                        - window["rejected_bad"],
                        "p50_ms": ok[len(ok) // 2] if ok else None,
                        "p99_ms": ok[min(len(ok) - 1, int(len(ok) * 0.99))] if ok else None})
    near_kill = [r for r in rows if kill_at <= r["t"] < kill_at + 60
                 and r["outcome"] not in ("ok", "rejected_bad")]
    recovered = 0.0  # no request failed: the stub's loss was not felt
    if near_kill:  # back when a request sent after the last failure succeeds
        last_failure = max(r["t"] for r in near_kill)
        recovered = min((r["t"] + r["latency"] for r in rows
                         if r["outcome"] == "ok" and r["t"] > last_failure),
                        default=float("nan")) - kill_at
    return {"counts": dict(counts), "minutes": minutes,
            "lost_or_wrong": counts["wrong"] + sum(v for k, v in counts.items()
                                                  if k.startswith("error:")),
            "failed_near_kill": len(near_kill),
            "recovered_after_s": recovered,
            "rss_anon_mib": [s["rss_anon_mib"] for s in raw["samples"]],
            "rss_anon_growth": memory_growth(raw["samples"]),
            "shm_mib": [s["shm_mib"] for s in raw["samples"]]}


def plot(raw: Dict[str, Any], path: Path) -> None:
    """RSS and shm over time, p50/p99 per 10 s window, kill and burst marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (mem, per, lat) = plt.subplots(3, 1, figsize=(10, 10), sharex=True)
    t = [s["t"] for s in raw["samples"]]
    mem.plot(t, [s["rss_anon_mib"] for s in raw["samples"]], label="anonymous RSS, all (MiB)")
    mem.plot(t, [s["shm_mib"] for s in raw["samples"]], label="/dev/shm regions (MiB)")
    mem.set_ylabel("MiB")
    mem.legend(loc="upper left")
    for label in memory_growth(raw["samples"]):  # each from its first sample: growth
        points = [(s["t"], s["rss_anon_by_process"][label]) for s in raw["samples"]
                  if label in s.get("rss_anon_by_process", {})]
        per.plot([p[0] for p in points], [p[1] - points[0][1] for p in points], label=label)
    per.axhline(GROWTH_TARGET_MIB, color="red", linestyle="--", label="target")
    per.set_ylabel("RssAnon growth per process (MiB)")
    per.legend(loc="upper left", fontsize=7)
    windows: Dict[int, List[float]] = {}
    for row in raw["rows"]:
        if row["outcome"] == "ok":
            windows.setdefault(int(row["t"] // 10), []).append(row["latency"] * 1000)
    keys = sorted(windows)
    lat.plot([k * 10 for k in keys], [statistics.median(windows[k]) for k in keys], label="p50")
    lat.plot([k * 10 for k in keys], [sorted(windows[k])[int(len(windows[k]) * 0.99)]
                                      for k in keys], label="p99")
    lat.set_ylabel("latency of ok requests (ms)")
    lat.set_xlabel("seconds")
    lat.legend(loc="upper left")
    for event in raw["events"]:
        for axis in (mem, per, lat):
            axis.axvline(event["t"], color="grey", linestyle=":")
        mem.annotate(event["event"][:40], (event["t"], 0), rotation=90, fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def growth_lines(growth: Dict[str, Dict[str, float]]) -> List[str]:
    """The per-process RssAnon table of the report, with the target's verdict."""
    worst = max((g["growth"] for g in growth.values()), default=0.0)
    verdict = "met" if worst < GROWTH_TARGET_MIB else "MISSED"
    lines = ["", f"RssAnon per process (MiB; target: growth < {GROWTH_TARGET_MIB} MiB for every "
             f"process, {verdict}: largest {worst:+.0f} MiB; curves in the .png):", "",
             "| process | first | last | max | growth |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {label} | {g['first']:.0f} | {g['last']:.0f} | {g['max']:.0f} | "
              f"{g['growth']:+.0f} |" for label, g in growth.items()]
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10)
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--kill-at", type=float, default=180)
    parser.add_argument("--burst-at", type=float, default=360)
    parser.add_argument("--burst-s", type=float, default=30)
    parser.add_argument("--burst-clients", type=int, default=24)
    parser.add_argument("--out", default="soak", help="file names in bench/results (a short "
                        "run: another name, so that soak.* stays the 10-minute run's)")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    raw = run(args.minutes, args.clients, args.kill_at, args.burst_at, args.burst_s,
              args.burst_clients)
    summary = summarise(raw, args.kill_at)
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / f"{args.out}.json").write_text(json.dumps(
        {"args": vars(args), "summary": summary, "events": raw["events"],
         "samples": raw["samples"]}, indent=1,
        default=str))
    plot(raw, RESULTS_DIR / f"{args.out}.png")
    command = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items())
    lines = ["# Soak: served resnet50 (ONNX, defaults), mixed good/bad load", "",
             machine_line(machine_info()), "", f"Command: `python -m bench.soak {command}`", "",
             f"Outcomes: {json.dumps(summary['counts'])}", "",
             f"Lost, duplicated, misordered or unexpected errors: {summary['lost_or_wrong']}",
             f"Requests that failed within a minute of the stub kill: "
             f"{summary['failed_near_kill']}; service back "
             f"{summary['recovered_after_s']:.1f} s after the kill", "",
             "Events: " + "; ".join(f"{e['t']:.0f} s {e['event']}" for e in raw["events"]), "",
             "| minute | requests | ok | not ok (busy, unavailable) | p50 ms | p99 ms |",
             "|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {m['minute']} | {m['requests']} | {m['ok']} | {m['not ok']} | "
              f"{m['p50_ms'] and round(m['p50_ms'])} | {m['p99_ms'] and round(m['p99_ms'])} |"
              for m in summary["minutes"]]
    rss, shm = summary["rss_anon_mib"], summary["shm_mib"]
    lines += ["", f"Anonymous RSS of tritonserver and stubs: first {rss[0]:.0f} MiB, last "
              f"{rss[-1]:.0f} MiB, max {max(rss):.0f} MiB; /dev/shm regions: first "
              f"{shm[0]:.0f} MiB, last {shm[-1]:.0f} MiB, max {max(shm):.0f} MiB ({args.out}.png)."]
    lines += growth_lines(summary["rss_anon_growth"])
    (RESULTS_DIR / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
