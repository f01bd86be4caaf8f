"""The tuner's report: ``tune_report.md`` (the table of points tried, the chosen one and why,
the machine and the command), ``tune_report.json`` (the same, for programs) and
``tune_report.png`` (throughput against p99 latency, the chosen point marked).

matplotlib draws the plot and is imported only here, lazily (``pip install 'towhee_rt[tune]'``);
without it the table and the JSON are still written and the report says the plot was skipped.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Dict, Optional

from .search import Objective, SearchResult, Trial
from .space import ServedPipeline

REPORT_NAME = "tune_report"
PLOT_HINT = "pip install 'towhee_rt[tune]'"


def _figure(value: Optional[float], digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.{digits}f}"


def trial_row(trial: Trial, pipeline: ServedPipeline, extras: Dict[Any, dict]) -> Dict[str, Any]:
    """One point of the table as JSON-ready values; ``extras[point]`` adds per-point notes
    (``reload_s``, ``other_load_cores``)."""
    m = trial.measurement
    return {"index": trial.index, "move": trial.move, "settings": pipeline.label(trial.point),
            "point": trial.point.to_dict(), "accepted": trial.accepted,
            "failure": trial.failure, "measurement": m.to_dict() if m else None,
            "other_load_cores": None, "reload_s": None, **extras.get(trial.point, {})}


def build(result: SearchResult, pipeline: ServedPipeline, objective: Objective,
          extras: Dict[Any, dict], context: Dict[str, Any]) -> Dict[str, Any]:
    """The whole report as a dict: ``context`` carries the command, machine, inputs, paths,
    timings and the search's limits."""
    return {**context, "objective": objective.name, "p99_budget_ms": objective.p99_budget_ms,
            "stopped": result.stopped, "moves_tried": len(result.moves_tried),
            "moves_measured": len(result.moves_measured),
            "accepted_moves": result.accepted_moves,
            "chosen": trial_row(result.best, pipeline, extras),
            "points": [trial_row(t, pipeline, extras) for t in result.trials]}


def markdown(report: Dict[str, Any]) -> str:
    """The report as a Markdown page."""
    chosen = report["chosen"]
    m = chosen["measurement"]
    machine = report["machine"]
    budget = (f", p99 budget {report['p99_budget_ms']:g} ms" if report["p99_budget_ms"]
              else "")
    lines = [
        f"# Tuning of pipeline `{report['pipeline']}`", "",
        f"Command: `{report['command']}`", "",
        f"Machine: {machine['cpu']}, {machine['cores']} usable cores, {machine['platform']}, "
        f"Python {machine['python']}, {machine['date']}; "
        + ", ".join(f"{k} {v}" for k, v in machine["versions"].items()), "",
        f"Objective: {report['objective']}{budget}. Inputs: {report['inputs']}. "
        f"Search: {len(report['points'])} points ({report['moves_tried']} moves tried) in "
        f"{report['search_seconds']:.0f} s (time budget {report['time_budget_s']:g} s; the "
        f"whole run took {report['seconds']:.0f} s: the server start, "
        f"{report['startup_s']:.1f} s, and writing are outside the budget); stopped because "
        f"{report['stopped']}; reload of the changed models {report['reload_median_s']} s "
        f"median per point; {report['limits']}.", "",
        f"Outcome: {report['outcome']}", "",
        "## Chosen" if report["written_to"] else "## Best measured (not written)", "",
        f"**{chosen['settings']}**: {_figure(m['items_per_s'])} items/s, p50 "
        f"{_figure(m['p50_ms'])} ms, p99 {_figure(m['p99_ms'])} ms "
        f"({m['windows']} windows, {'stable' if m['stable'] else 'NOT stable'}).", "",
        f"Why: {report['why']}", "",
        (f"Written to: `{report['written_to']}`" if report["written_to"] else
         "Nothing written: no move was measured."), "",
        "## Points tried", "",
        "Figures come from the last 3 windows of each point; a point is stable when 3 "
        "consecutive windows agree within 10% on items/s; spread = (max - min) / median of "
        "those windows; other load = cores used by other processes meanwhile (noise).", "",
        "| # | move | settings | items/s | p50 ms | p99 ms | windows | stable | spread | "
        "other load | kept |",
        "|---:|---|---|---:|---:|---:|---:|---|---:|---:|---|",
    ]
    for row in report["points"]:
        fig = row["measurement"]
        load = row["other_load_cores"]
        if fig is None:
            lines.append(f"| {row['index']} | {row['move']} | {row['settings']} | failed: "
                         f"{row['failure'][:160]} | | | | | | | |")
            continue
        stable = "yes" if fig["stable"] else "**no**"
        if fig["errors"]:
            stable += f", {fig['errors']} failed requests"
        lines.append(
            f"| {row['index']} | {row['move']} | {row['settings']} | "
            f"{_figure(fig['items_per_s'])} | {_figure(fig['p50_ms'])} | "
            f"{_figure(fig['p99_ms'])} | {fig['windows']} | {stable} | "
            f"{fig['spread']:.0%} | {'-' if load is None else f'{load:.2f}'} | "
            f"{'yes' if row['accepted'] else ''} |")
    unstable = sum(1 for r in report["points"]
                   if r["measurement"] and not r["measurement"]["stable"])
    if unstable:
        lines += ["", f"{unstable} point(s) never stabilised within the window and time caps: "
                      "their figures are the last windows' and less certain."]
    lines += ["", f"Plot: {report['plot']}", ""]
    return "\n".join(lines)


def write(report: Dict[str, Any], directory: Path) -> Dict[str, str]:
    """Write the PNG (when matplotlib is there), the Markdown and the JSON into ``directory``;
    their paths (``plot`` names the PNG, or why it was skipped)."""
    directory.mkdir(parents=True, exist_ok=True)
    png = directory / f"{REPORT_NAME}.png"
    report["plot"] = plot(report, png)
    paths = {"markdown": str(directory / f"{REPORT_NAME}.md"),
             "json": str(directory / f"{REPORT_NAME}.json"),
             "png": str(png) if png.exists() else None}
    Path(paths["markdown"]).write_text(markdown(report))
    Path(paths["json"]).write_text(json.dumps(report, indent=1) + "\n")
    return paths


def plot(report: Dict[str, Any], path: Path) -> str:
    """Draw items/s against p99 for every measured point into ``path``; what happened."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display needed
        import matplotlib.pyplot as plt
    except ImportError:
        return f"skipped: matplotlib is not installed ({PLOT_HINT})"
    points = [r for r in report["points"] if r["measurement"] and r["measurement"]["p99_ms"]]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for row in points:
        fig_ = row["measurement"]
        chosen = row["index"] == report["chosen"]["index"]
        ax.scatter(fig_["p99_ms"], fig_["items_per_s"], s=80 if chosen else 30,
                   marker="*" if chosen else ("o" if fig_["stable"] else "x"),
                   color="tab:red" if chosen else "tab:blue", zorder=3 if chosen else 2)
        ax.annotate(str(row["index"]), (fig_["p99_ms"], fig_["items_per_s"]), fontsize=8,
                    xytext=(4, 3), textcoords="offset points")
    if report["p99_budget_ms"]:
        ax.axvline(report["p99_budget_ms"], color="grey", linestyle="--", label="p99 budget")
        ax.legend(loc="lower right")
    ax.set_xlabel("p99 latency (ms)")
    ax.set_ylabel("items/s")
    ax.set_title(f"{report['pipeline']}: points tried (star: chosen, x: not stable)",
                 fontsize=10)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return f"`{path.name}` (items/s against p99; numbers are the table's #)"
