"""Latency/throughput curves per pipeline (issue 23, item 7), from results.json's sweep points.

For every system measured at several client concurrencies (towhee_rt served settings, the
PyTriton, LitServe and Infinity peers), one PNG per pipeline, ``curve_<pipeline>.png``:

- left: items/s against requests in flight (1 to 32);
- right: p50 (solid) and p99 (dotted) latency against items/s, each point labelled with its
  in-flight count, so a user can pick the point that fits a latency budget.

    python -m bench.curves [bench/results/results.json] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Optional

from .common import RESULTS_DIR, machine_line


def sweep_points(pipeline_result: Dict[str, Any]) -> Dict[str, List[Dict[str, Any]]]:
    """``{system: [{concurrency, items_per_s, p50_ms, p99_ms}, ...]}`` sorted by concurrency;
    only systems with at least two concurrency points (a curve needs two). When a point was
    measured twice (re-measured rows are single rows, but a system may repeat a
    concurrency), the faster one is kept."""
    by_system: Dict[str, Dict[int, Dict[str, Any]]] = {}
    for row in pipeline_result.get("rows", []):
        concurrency = (row.get("settings") or {}).get("concurrency")
        if concurrency is None:
            continue
        point = {"concurrency": int(concurrency), "items_per_s": row["items_per_s"],
                 "p50_ms": row.get("p50_ms"), "p99_ms": row.get("p99_ms")}
        points = by_system.setdefault(row["system"], {})
        current = points.get(point["concurrency"])
        if current is None or point["items_per_s"] > current["items_per_s"]:
            points[point["concurrency"]] = point
    return {system: [points[c] for c in sorted(points)]
            for system, points in by_system.items() if len(points) >= 2}


def curve_png(results: Dict[str, Any], pipeline: str, path: Path) -> Optional[Path]:
    """Write the two-panel curve of ``pipeline``; None when matplotlib or points are missing."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no curves (pip install matplotlib)")
        return None
    curves = sweep_points(results["pipelines"][pipeline])
    if not curves:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 6.4))
    colors = plt.get_cmap("tab20").colors
    handles = []
    for i, (system, points) in enumerate(curves.items()):
        color = colors[i % len(colors)]
        xs = [p["concurrency"] for p in points]
        rates = [p["items_per_s"] for p in points]
        (line,) = left.plot(xs, rates, "o-", color=color, markersize=4, linewidth=1.2)
        handles.append((line, system))
        p50 = [(p["items_per_s"], p["p50_ms"]) for p in points if p["p50_ms"] is not None]
        p99 = [(p["items_per_s"], p["p99_ms"]) for p in points if p["p99_ms"] is not None]
        if p50:
            right.plot(*zip(*p50), "o-", color=color, markersize=4, linewidth=1.2)
            for p, (x, y) in zip([p for p in points if p["p50_ms"] is not None], p50):
                right.annotate(str(p["concurrency"]), (x, y), fontsize=6, color=color,
                               xytext=(2, 2), textcoords="offset points")
        if p99:
            right.plot(*zip(*p99), ":", color=color, linewidth=1.0)
    ticks = sorted({p["concurrency"] for pts in curves.values() for p in pts})
    left.set_xscale("log", base=2)
    left.set_xticks(ticks)
    left.set_xticklabels([str(t) for t in ticks])
    left.set_xlabel("requests in flight (one item per request)")
    left.set_ylabel("items/s")
    left.grid(alpha=0.3)
    right.set_yscale("log")
    right.set_xlabel("items/s")
    right.set_ylabel("latency per request, ms (p50 solid, p99 dotted; labels: in flight)")
    right.grid(alpha=0.3, which="both")
    fig.legend([h for h, _ in handles], [textwrap.shorten(s, 90) for _, s in handles],
               loc="lower center", ncol=2, fontsize=7, frameon=False)
    foreign = [r["foreign_cores"] for r in results["pipelines"][pipeline].get("rows", [])
               if r.get("foreign_cores") is not None
               and (r.get("settings") or {}).get("concurrency") is not None]
    load = (f"; other processes used {min(foreign):.2f}-{max(foreign):.2f} cores during "
            "these points" if foreign else "")
    title = f"{pipeline}: throughput and latency by requests in flight{load}\n" + "\n".join(
        textwrap.wrap(machine_line(results["machine"]), 180))
    fig.suptitle(title, fontsize=8)
    rows = (len(handles) + 1) // 2
    fig.tight_layout(rect=(0, min(0.45, 0.04 + 0.032 * rows), 1, 0.93))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_curves(results: Dict[str, Any], out_dir: Path) -> List[Path]:
    """``curve_<pipeline>.png`` for every pipeline with sweep points."""
    out = []
    for pipeline in results.get("pipelines", {}):
        png = curve_png(results, pipeline, out_dir / f"curve_{pipeline}.png")
        if png:
            out.append(png)
    return out


def main(argv: Optional[List[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.curves",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("results", nargs="?", type=Path, default=RESULTS_DIR / "results.json")
    parser.add_argument("--out", type=Path, default=None, help="default: beside the JSON")
    args = parser.parse_args(argv)
    results = json.loads(args.results.read_text())
    for path in write_curves(results, args.out or args.results.parent):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
