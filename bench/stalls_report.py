"""The report of ``bench.stalls``: one printed line per run, and the JSON and markdown files.
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence

from .common import machine_info


def result_line(res: Dict[str, Any]) -> str:
    s = res["summary"]
    return (f"{res['label']}: {s['requests']} req in {s['seconds']} s, {s['items_per_s']}/s, "
            f"p50 {s['p50_ms']} p99 {s['p99_ms']} max {s['max_ms']} ms "
            f"(p99/p50 {s['p99_over_p50']}, >1s {s['over_1s']}, failed {s['failed']}); "
            f"cpu {res['cpu']}; load {res['loadavg_before']}")


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
