"""Turn the raw figures of ``bench/run.py`` into results.json, results.md, a bar chart and
the latency/throughput curves (``bench/curves.py``)."""
from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any, Dict, List, Optional

from . import targets as issue_targets
from .common import machine_line

HF = "HF-style (torch eager, batch 1)"
CEILING = "ceiling: ONNX Runtime alone"
PEER = "PyTriton peer (same ONNX + preprocessing, @batch)"
LITSERVE = "LitServe peer"
INFINITY = "Infinity peer"
SERVED = "towhee_rt served, "
RECOMMENDED_PREFIX = SERVED + "defaults"
ONE_INSTANCE_PREFIX = SERVED + "1 model instance x 2 threads (the default"
SERVED_INT8 = SERVED + "int8 (onnx_int8)"
TUNED = SERVED + "tuned for throughput"


def best_rows(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """One row per system: the highest items/s among its points (concurrency, batch size)."""
    best: Dict[str, Dict[str, Any]] = {}
    for row in rows:
        current = best.get(row["system"])
        if current is None or row["items_per_s"] > current["items_per_s"]:
            best[row["system"]] = row
    return list(best.values())


def _find(rows: List[Dict[str, Any]], prefix: str) -> Optional[Dict[str, Any]]:
    return next((r for r in rows if r["system"].startswith(prefix)), None)


def _best(rows: List[Dict[str, Any]], prefix: str) -> Optional[Dict[str, Any]]:
    """The fastest row whose system starts with ``prefix`` (a peer's several settings)."""
    return max((r for r in rows if r["system"].startswith(prefix)),
               key=lambda r: r["items_per_s"], default=None)


def _fmt(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _at(row: Dict[str, Any]) -> str:
    settings = row.get("settings", {})
    if "concurrency" in settings:
        return f"{settings['concurrency']} in flight"
    if "batch_size" in settings:
        return f"batch {settings['batch_size']}"
    if row["system"].startswith("towhee_rt local"):
        return "list, chunks of 8"
    return "batch 1 loop"


def ratios(pipeline_result: Dict[str, Any]) -> Dict[str, float]:
    rows = best_rows(pipeline_result["rows"])
    hf, ceiling = _find(rows, HF), _find(rows, CEILING)
    return {"hf": hf["items_per_s"] if hf else None,
            "ceiling": ceiling["items_per_s"] if ceiling else None}


def summary_table(results: Dict[str, Any]) -> str:
    lines = ["| pipeline | system | items/s | p50 ms | p99 ms | x HF | x ceiling | best at | "
             "other load (cores) |",
             "|---|---|---:|---:|---:|---:|---:|---|---:|"]
    for pipeline, result in results["pipelines"].items():
        refs = ratios(result)
        for row in best_rows(result["rows"]):
            rate = row["items_per_s"]
            x_hf = rate / refs["hf"] if refs["hf"] else None
            x_ceiling = rate / refs["ceiling"] if refs["ceiling"] else None
            lines.append(f"| {pipeline} | {row['system']} | {rate:.1f} | {_fmt(row['p50_ms'], 0)} | "
                         f"{_fmt(row['p99_ms'], 0)} | {_fmt(x_hf, 2)} | {_fmt(x_ceiling, 2)} | "
                         f"{_at(row)} | {_fmt(row.get('foreign_cores'), 2)} |")
    return "\n".join(lines)


def sweep_table(results: Dict[str, Any]) -> str:
    lines = ["| pipeline | system | in flight | items/s | p50 ms | p99 ms | CPU by process "
             "(cores) |", "|---|---|---:|---:|---:|---:|---|"]
    for pipeline, result in results["pipelines"].items():
        for row in result["rows"]:
            concurrency = row.get("settings", {}).get("concurrency")
            if concurrency is None:
                continue
            split = ", ".join(f"{k.replace('stub ', '').replace('pipeline_', '')} {v:.2f}"
                              for k, v in list(row.get("cpu_split", {}).items())[:5])
            lines.append(f"| {pipeline} | {row['system']} | {concurrency} | "
                         f"{row['items_per_s']:.1f} | {_fmt(row['p50_ms'], 0)} | "
                         f"{_fmt(row['p99_ms'], 0)} | {split} |")
    return "\n".join(lines)


def profile_markdown(results: Dict[str, Any]) -> str:
    lines = []
    for pipeline, result in results["pipelines"].items():
        for label, profile in result.get("profiles", {}).items():
            lines += _profile_table(pipeline, label, profile)
    return "\n".join(lines)


def _profile_table(pipeline: str, label: str, profile: Dict[str, Any]) -> List[str]:
    lines = [f"py-spy, {pipeline}, {label}, under 8 requests in flight "
             f"({profile.get('seconds')} s at {profile.get('rate')} Hz; busy = share of "
             "samples where the stub was on a CPU):\n",
             "| stub | busy | where its samples are |", "|---|---:|---|"]
    for stub, data in profile.get("stubs", {}).items():
        if "shares" not in data:
            lines.append(f"| {stub} | - | {data.get('error', '')} |")
            continue
        shares = ", ".join(f"{k} {v:.0%}" for k, v in data["shares"].items())
        svg = f" ([flame graph]({data['svg']}))" if data.get("svg") else ""
        lines.append(f"| {stub} | {data['busy_fraction']:.0%} | {shares}{svg} |")
    lines.append("")
    return lines


def summary_markdown(results: Dict[str, Any]) -> str:
    out = [f"Machine: {machine_line(results['machine'])}",
           "Served rows use the fp32 ONNX format unless they say int8; one item per request, "
           "towhee_rt.Client over gRPC (mode='async_infer'); 'x' columns are ratios of items/s "
           "in this run ('x ceiling' against the fp32 model's ceiling).", "",
           summary_table(results)]
    target_lines = issue_targets.markdown(issue_targets.all_targets(results))
    if target_lines:
        out += ["", "Targets of issues 15 and 23 (ratios within this run; CPU ms per item from "
                "each point's CPU split, bench/cpu_budget.py):", target_lines]
    tuned = {p: r["tuned"] for p, r in results["pipelines"].items() if r.get("tuned")}
    if tuned:
        out += ["", "Tuner runs (towhee_rt.tune on the int8 repository; wall time includes "
                "its server start):"] + [
            f"- {p}: {objective}: {t['tuner_wall_s']:.0f} s, chose {t['chosen']}"
            for p, runs in tuned.items() for objective, t in runs.items()]
    return "\n".join(out)


def markdown(results: Dict[str, Any]) -> str:
    info = results["machine"]
    failures = [f"- {pipeline}: {f['system']}: {f['error'][:400]}"
                for pipeline, result in results["pipelines"].items()
                for f in result.get("failures", [])]
    grouped: Dict[str, List[str]] = {}
    for pipeline, result in results["pipelines"].items():
        for row in result["rows"]:
            for note in filter(None, (n.strip() for n in (row.get("note") or "").split(";"))):
                where = f"{pipeline}: {row['system'].replace(SERVED, '')}"
                if where not in grouped.setdefault(note, []):
                    grouped[note].append(where)
    notes = [f"{note} ({'; '.join(where)})" for note, where in grouped.items()]
    parts = [
        "# towhee_rt benchmark results", "",
        f"- machine: {info['cpu']}, {info['cores']} cores ({info['platform']})",
        f"- date: {info['date']}; run took {results.get('run_seconds', 0):.0f} s"
        f"{' (--quick)' if results.get('quick') else ''}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in info["versions"].items()),
        "- command: `bash bench/run.sh` (see bench/README.md for what each row is)",
        "- local rows: items/s from one call on the list (chunks of 8), latency from one item per "
        "call; ceiling: latency per batch; 'other load': CPU used by processes outside the "
        "benchmark during the point", "",
        "## Summary (best point per system)", "", summary_markdown(results).split("\n", 1)[-1],
        "", "## Client-concurrency sweep (served and peer rows)", "", sweep_table(results)]
    profile = profile_markdown(results)
    if profile:
        parts += ["", "## Profile", "", profile]
    if failures:
        parts += ["", "## Failures", ""] + failures
    skipped = [f"- {pipeline}: {s['system']}: {s['why']}"
               for pipeline, result in results["pipelines"].items()
               for s in result.get("skipped", [])]
    if skipped:
        parts += ["", "## Not measured", ""] + skipped
    if notes:
        parts += ["", "## Notes", ""] + [f"- {n}" for n in notes]
    return "\n".join(parts) + "\n"


CHART_SYSTEMS = [
    (HF, "HF-style loop"), ("towhee_rt local, torch", "towhee_rt local torch"),
    ("towhee_rt local, onnx", "towhee_rt local onnx"),
    (ONE_INSTANCE_PREFIX, "towhee_rt served, 1 instance x 2 threads"),
    (RECOMMENDED_PREFIX, "towhee_rt served, defaults (2 x 1 thread)"),
    (PEER, "PyTriton peer"), (LITSERVE, "LitServe peer (best setting)"),
    (INFINITY, "Infinity peer (best setting)"), (CEILING, "ONNX Runtime alone (ceiling)"),
    (SERVED_INT8, "towhee_rt served, int8"),
    (TUNED, "towhee_rt served, int8, tuned"),
]


def chart(results: Dict[str, Any], path: Path) -> Optional[Path]:
    """Grouped bars: items/s per system per pipeline (best point of each)."""
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no chart (pip install matplotlib)")
        return None
    pipelines = list(results["pipelines"])
    width = max(9.0, 4.2 * len(pipelines) + 1.0)
    fig, axes = plt.subplots(1, len(pipelines), figsize=(width, 5.6), squeeze=False)
    colors = plt.get_cmap("tab20").colors
    for ax, pipeline in zip(axes[0], pipelines):
        rows = best_rows(results["pipelines"][pipeline]["rows"])
        values, labels = [], []
        for prefix, label in CHART_SYSTEMS:
            row = (_best if prefix in (LITSERVE, INFINITY) else _find)(rows, prefix)
            values.append(row["items_per_s"] if row else 0.0)
            labels.append(label)
        bars = ax.bar(range(len(values)), values, color=colors[:len(values)])
        for bar, value in zip(bars, values):
            if value:
                ax.annotate(f"{value:.1f}", (bar.get_x() + bar.get_width() / 2, value),
                            ha="center", va="bottom", fontsize=8)
        ax.set_title(pipeline)
        ax.set_xticks(range(len(values)))
        ax.set_xticklabels([])
        ax.set_ylabel("items/s" if ax is axes[0][0] else "")
        ax.grid(axis="y", alpha=0.3)
    handles = [plt.Rectangle((0, 0), 1, 1, color=colors[i]) for i in range(len(CHART_SYSTEMS))]
    fig.legend(handles, [label for _, label in CHART_SYSTEMS], loc="lower center",
               ncol=4, fontsize=8, frameon=False)
    title = ("items/s per system (best concurrency / batch size; served rows: ONNX fp32 "
             "or int8)\n") + \
        "\n".join(textwrap.wrap(machine_line(results["machine"]), int(width * 14)))
    fig.suptitle(title, fontsize=8)
    fig.tight_layout(rect=(0, 0.1, 1, 0.9))
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def write_all(results: Dict[str, Any], out_dir: Path) -> List[Path]:
    """Write results.json, results.md and items_per_s.png into ``out_dir``."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results = dict(results, targets=issue_targets.all_targets(results))
    json_path = out_dir / "results.json"
    json_path.write_text(json.dumps(results, indent=1, default=str) + "\n")
    md_path = out_dir / "results.md"
    md_path.write_text(markdown(results))
    paths = [json_path, md_path]
    png = chart(results, out_dir / "items_per_s.png")
    if png:
        paths.append(png)
    from .curves import write_curves  # issue 23 item 7: curve_<pipeline>.png

    paths += write_curves(results, out_dir)
    return paths
