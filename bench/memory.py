"""Memory under load: private memory (RssAnon) of tritonserver and each Python stub, sampled
every second, for several server environments side by side.

    python -m bench.memory [--seconds 40] [--inflight 12] [--variants default,glibc_default]
                           [--out memory_compare]

One repository (``cv2_rgb -> timm resnet18``, ONNX, random weights, served defaults) is served
once per variant, each with its own environment (``VARIANTS``: the launch's default, plain
glibc, glibc tunables, an allocator through ``LD_PRELOAD`` when one is installed). For
``--seconds`` ``--inflight`` client threads send one item per request: the shared good images
and every bad one (/work/shared/testdata/images/{good,bad}). Per process: RssAnon before the
load, at its end and 5 s after it (the growth that stays), and requests per second. Writes
``bench/results/<out>.json``, ``.md`` and ``.png`` (one curve per process and variant).
"""
from __future__ import annotations

import argparse
import json
import os
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

from towhee_rt.triton import procs

from .common import IMAGES_DIR, RESULTS_DIR, image_files, machine_info, machine_line
from .cpu_load import server_process_label

BAD_DIR = IMAGES_DIR.parent / "bad"
SAMPLE_S = 1.0
SETTLE_S = 5.0


def _variants() -> Dict[str, Dict[str, str]]:
    """name -> environment given to ``towhee_rt.serve(env=...)`` (over the launch's own; a
    MALLOC_* or LD_PRELOAD of its own replaces the launch's allocator settings)."""
    out = {
        "default": {},
        "glibc_default": {"TOWHEE_RT_ALLOCATOR": "glibc"},
        "arena_max_2": {"MALLOC_ARENA_MAX": "2"},
        "mmap_threshold_128k": {"MALLOC_MMAP_THRESHOLD_": "131072"},
        "trim_threshold_128k": {"MALLOC_TRIM_THRESHOLD_": "131072"},
        "mmap_trim_1m": {"MALLOC_MMAP_THRESHOLD_": "1048576", "MALLOC_TRIM_THRESHOLD_": "1048576"},
        "arena2_mmap128k_trim128k": {"MALLOC_ARENA_MAX": "2", "MALLOC_MMAP_THRESHOLD_": "131072",
                                     "MALLOC_TRIM_THRESHOLD_": "131072"},
    }
    preload = [("jemalloc", "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"),
               ("tcmalloc", "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4")]
    if os.environ.get("BENCH_MEMORY_PRELOAD"):  # name=path[,name=path]: e.g. a wheel's mimalloc
        preload += [tuple(pair.split("=", 1))
                    for pair in os.environ["BENCH_MEMORY_PRELOAD"].split(",")]
    for name, lib in preload:
        if os.path.exists(lib):
            out[name] = {"LD_PRELOAD": lib}
    return out


def _served_env(pid: int) -> Dict[str, str]:
    """The allocator variables tritonserver actually runs with (its /proc environ)."""
    try:
        raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return {}
    pairs = (entry.decode(errors="replace").partition("=") for entry in raw if entry)
    return {k: v for k, _, v in pairs if k.startswith(("MALLOC_", "LD_PRELOAD", "TOWHEE_RT_AL"))}


def _items() -> List[bytes]:
    good = [p.read_bytes() for p in image_files()]
    bad = [p.read_bytes() for p in sorted(BAD_DIR.iterdir())] if BAD_DIR.is_dir() else []
    return good + bad


def sample(server_pid: int) -> Dict[str, float]:
    """RssAnon (MiB) of tritonserver and each stub, by label (two instances of a model add)."""
    out: Dict[str, float] = {}
    for member in procs.group_members(server_pid):
        label = server_process_label(member.pid, server_pid, per_model=True)
        out[label] = out.get(label, 0.0) + procs.resident_kib(member.pid)[0] / 1024
    return out


def _server_ticks(server_pid: int) -> int:
    """CPU ticks of tritonserver and its stubs so far (less moved by foreign load than
    requests per second on a shared machine)."""
    return sum(m.cpu_ticks for m in procs.group_members(server_pid))


def smaps_breakdown(pid: int) -> Dict[str, float]:
    """Where a process's private memory lies (MiB of Anonymous in /proc/PID/smaps): the main
    heap (``[heap]``, glibc's main arena, grown with brk), the other anonymous mappings of
    64 MiB reservations (glibc's per-thread arenas), and every other anonymous mapping (large
    blocks mmapped on their own, thread stacks, libraries' own pools)."""
    out = {"heap": 0.0, "arenas_64mib": 0.0, "other": 0.0}
    try:
        lines = Path(f"/proc/{pid}/smaps").read_text().splitlines()
    except OSError:
        return out
    kind = "other"
    for line in lines:
        head = line.split()
        if head and "-" in head[0] and ":" not in head[0]:
            lo, hi = (int(x, 16) for x in head[0].split("-"))
            name = head[5] if len(head) > 5 else ""
            # A non-main arena: an anonymous mapping starting on a 64 MiB boundary.
            kind = "heap" if name == "[heap]" else (
                "arenas_64mib" if not name and lo % (64 << 20) == 0 and hi - lo <= 64 << 20
                else "other")
        elif head and head[0] == "Anonymous:":
            out[kind] += int(head[1]) / 1024
    return out


def _client(url: str, items: List[bytes], stop_at: float, budget: int, offset: int,
            counts: Dict[str, int], lock: threading.Lock) -> None:
    import towhee_rt as towhee

    with towhee.Client(url, timeout=30.0, retries=0) as client:
        k = offset
        while time.monotonic() < stop_at:
            with lock:
                if counts["ok"] + counts["error"] + counts["sent"] >= budget:
                    return
                counts["sent"] += 1
            (outcome,) = client.infer([items[k % len(items)]], errors="return")
            k += 1
            with lock:
                counts["sent"] -= 1
                counts["error" if isinstance(outcome, BaseException) else "ok"] += 1


def load_and_sample(url: str, server_pid: int, items: List[bytes], seconds: float,
                    inflight: int, requests: int = 0) -> Dict[str, Any]:
    """``inflight`` clients for ``seconds`` (or until ``requests`` were answered, when given);
    RssAnon samples every second, then SETTLE_S more after the load."""
    counts, lock = {"ok": 0, "error": 0, "sent": 0}, threading.Lock()
    budget = requests or 1 << 62
    samples = [{"t": 0.0, **sample(server_pid)}]
    ticks = _server_ticks(server_pid)
    start = time.monotonic()
    stop_at = start + seconds
    threads = [threading.Thread(target=_client, args=(url, items, stop_at, budget, 3 * n,
                                                      counts, lock))
               for n in range(inflight)]
    for thread in threads:
        thread.start()
    ended = None
    while ended is None or time.monotonic() < ended + SETTLE_S:
        time.sleep(SAMPLE_S)
        samples.append({"t": time.monotonic() - start, **sample(server_pid)})
        if ended is None and not any(thread.is_alive() for thread in threads):
            ended = time.monotonic()
        elif ended is None and time.monotonic() >= stop_at + 30:
            raise RuntimeError("clients still running 30 s after the end of the load")
    del counts["sent"]
    answered = counts["ok"] + counts["error"]
    cpu_ms = (_server_ticks(server_pid) - ticks) / procs.CLOCK_TICKS * 1000
    return {"samples": samples, "counts": counts, "load_s": ended - start,
            "server_cpu_ms_per_request": cpu_ms / max(1, answered),
            "requests_per_s": (counts["ok"] + counts["error"]) / (ended - start)}


def growth(samples: List[Dict[str, float]]) -> Dict[str, Dict[str, float]]:
    """Per process: MiB before, max, last (after the load settled) and last - before."""
    labels = sorted({k for s in samples for k in s if k != "t"})
    out = {}
    for label in labels:
        series = [s.get(label, 0.0) for s in samples]
        out[label] = {"before": series[0], "max": max(series), "after": series[-1],
                      "growth": series[-1] - series[0]}
    return out


def build_repo(root: Path):
    """The resnet18 ONNX decode pipeline's repository (random weights)."""
    import towhee_rt as towhee

    pipe = (towhee.dummy_input().pipeline_config(format_priority=["onnx"])
            .image_decode.cv2_rgb()
            .image_embedding.timm(model_name="resnet18", pretrained=False).as_function())
    return towhee.build_model_repo(pipe, root / "repo").path


def run(seconds: float, inflight: int, names: List[str], requests: int = 0) -> Dict[str, Any]:
    """Serve the repository once per variant and measure it."""
    import towhee_rt as towhee
    variants = _variants()
    unknown = [n for n in names if n not in variants]
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; available here: {sorted(variants)}")
    items = _items()
    results: Dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
        repo = build_repo(Path(tmp))
        for run_index, name in enumerate(names):
            env = variants[name]
            key = name if names.count(name) == 1 else f"{name} #{names[:run_index].count(name) + 1}"
            with towhee.serve(repo, grpc_port=0, http_port=0, metrics_port=0, env=env,
                              log_file=Path(tmp) / f"{run_index}.log") as server:
                uptime = Path("/proc/loadavg").read_text().split()[:3]
                served_env = _served_env(server.pid)
                result = load_and_sample(server.grpc_url, server.pid, items, seconds, inflight,
                                         requests)
                result["smaps"] = {
                    server_process_label(m.pid, server.pid, per_model=True):
                        smaps_breakdown(m.pid) for m in procs.group_members(server.pid)}
            result.update(variant=name, loadavg=uptime,
                          env=served_env,
                          growth=growth(result["samples"]))
            results[key] = result
            print(key, json.dumps({k: round(v["growth"]) for k, v in
                                    result["growth"].items()}),
                  f"{result['requests_per_s']:.1f} req/s", flush=True)
    return results


def plot(results: Dict[str, Any], path: Path) -> None:
    """One panel per process kind, one curve per variant."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = sorted({k for r in results.values() for k in r["growth"]})
    fig, axes = plt.subplots(len(labels), 1, figsize=(9, 2.6 * len(labels)), sharex=True,
                             squeeze=False)
    for axis, label in zip(axes[:, 0], labels):
        for name, result in results.items():
            axis.plot([s["t"] for s in result["samples"]],
                      [s.get(label, 0.0) for s in result["samples"]], label=name)
        axis.set_title(label, fontsize=9)
        axis.set_ylabel("RssAnon MiB")
    axes[0, 0].legend(fontsize=7, loc="upper left")
    axes[-1, 0].set_xlabel("seconds since the load started")
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def report(results: Dict[str, Any], args: argparse.Namespace) -> str:
    """Markdown: growth per process and variant, requests per second, load average."""
    labels = sorted({k for r in results.values() for k in r["growth"]})
    amount = f"{args.requests} requests" if args.requests else f"{args.seconds:.0f} s"
    lines = [f"# Memory under load: resnet18 ONNX decode pipeline, {args.inflight} in flight, "
             f"{amount}", "", machine_line(machine_info()), "",
             f"Command: `python -m bench.memory --seconds {args.seconds:g} --requests "
             f"{args.requests} --inflight {args.inflight} --variants {args.variants} "
             f"--out {args.out}`", "",
             "RssAnon growth in MiB (before the load -> 5 s after it), max during the load in "
             "brackets; requests/s over the load (its seconds); CPU time of tritonserver and its "
             "stubs per request; load average at its start.", "",
             "| variant | " + " | ".join(labels) + " | req/s | server CPU ms/req | loadavg |",
             "|---|" + "---:|" * (len(labels) + 3)]
    for name, result in results.items():
        cells = [f"{g['growth']:+.0f} ({g['before']:.0f} -> {g['after']:.0f}, max "
                 f"{g['max']:.0f})" for g in (result["growth"].get(label, {
                     "growth": 0, "before": 0, "after": 0, "max": 0}) for label in labels)]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {result['requests_per_s']:.1f} "
                     f"({result['load_s']:.0f} s) | {result['server_cpu_ms_per_request']:.1f} | "
                     f"{' '.join(result['loadavg'])} |")
    lines += ["", "Where the private memory lies after the load (MiB of Anonymous in "
              "/proc/PID/smaps: main heap / 64 MiB arenas / other):", "",
              "| variant | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for name, result in results.items():
        cells = ["{heap:.0f} / {arenas_64mib:.0f} / {other:.0f}".format(
            **result.get("smaps", {}).get(label, {"heap": 0, "arenas_64mib": 0, "other": 0}))
            for label in labels]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "Environments: " + "; ".join(f"{n}: {r['env'] or 'none'}"
                                                 for n, r in results.items())]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=40)
    parser.add_argument("--inflight", type=int, default=12)
    parser.add_argument("--requests", type=int, default=0,
                        help="stop each variant's load after this many answers (or --seconds)")
    parser.add_argument("--variants", default="default,glibc_default",
                        help=f"comma-separated, from: {', '.join(_variants())}")
    parser.add_argument("--out", default="memory_compare")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    results = run(args.seconds, args.inflight, [n for n in args.variants.split(",") if n],
                  args.requests)
    RESULTS_DIR.mkdir(exist_ok=True)
    (RESULTS_DIR / f"{args.out}.json").write_text(json.dumps(
        {"args": vars(args), "results": results}, indent=1))
    plot(results, RESULTS_DIR / f"{args.out}.png")
    text = report(results, args)
    (RESULTS_DIR / f"{args.out}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
