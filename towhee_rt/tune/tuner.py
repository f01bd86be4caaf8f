""":func:`tune`: search a repository's serving settings on a real server, write the best back.
"""
from __future__ import annotations

import dataclasses
import json
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence, Tuple

from ..backends.cpu import usable_cores
from ..backends.wire import PARAM_INPUT_KIND, PARAM_OPERATOR, PARAM_PARAMS
from ..errors import ConfigError
from ..triton.config import read_parameters, read_repository, write_config
from . import inputs as sample_inputs
from . import machine, report
from .evaluator import PointEvaluator, progress_line
from .search import Objective, SearchResult, hill_climb
from .session import ServedSession, session_dir
from .space import (CONCURRENCIES, Point, ServedPipeline, Space, apply_point, find_pipeline,
                    read_point)

#: The whole run's default wall-time limit (server start and report included).
DEFAULT_TIME_BUDGET_S = 300.0
#: Time kept back for writing the result and stopping the server.
RESERVE_S = 10.0


@dataclasses.dataclass
class TuneResult:
    """What :func:`tune` did: where it wrote, the chosen point and its figures, the report."""

    repository: Path
    chosen: Point
    chosen_label: str
    measurement: Any
    search: SearchResult
    report_files: Dict[str, Optional[str]]


def tune(repository, *, out=None, model: Optional[str] = None, objective: str = "throughput",
         p99_budget_ms: Optional[float] = None, max_instances: Optional[int] = None,
         concurrency: Optional[int] = None, time_budget_s: float = DEFAULT_TIME_BUDGET_S,
         inputs: Optional[Sequence[str]] = None, report_dir=None, window_s: float = 2.0,
         max_windows: int = 8, max_point_s: float = 40.0, command: str = "",
         progress: Optional[Callable[[str], None]] = None) -> TuneResult:
    """Search the serving settings of ``repository``'s pipeline and write the best ones.

    The repository is served (a scratch copy, on 127.0.0.1) and measured at one point after
    another: per-step instance counts, threads per instance, dynamic batching (on/off, queue
    delay, max batch) and the requests in flight, one knob at a time from the repository's
    current settings (hill-climbing), each point in windows repeated until 3 agree within
    10%. ``objective``: ``'throughput'`` (most items/s) or ``'latency'`` (lowest p50, measured
    at ``concurrency`` requests in flight, default 1); ``p99_budget_ms``: points whose p99 is
    above it are not chosen; ``max_instances``: the most instances of all steps together
    (default: twice the usable cores, or the repository's own count if higher);
    ``concurrency``: fix the requests in flight instead of searching them. The search stops
    in time to finish within ``time_budget_s`` seconds in all. The chosen settings are written
    into ``repository``'s configs, or into a copy at ``out`` (which must not exist); the report
    (``tune_report.md/.json/.png``) goes to ``report_dir``, default the directory holding the
    written repository. ``inputs``: files or directories to send (images, or text files of
    one input per line); default: generated photos for an image pipeline, else the first
    operator's warm-up items. ``progress`` gets one line per point (default: stderr).

    Example::

        result = towhee_rt.tune.tune("repo/", out="repo_tuned/", time_budget_s=240)
        print(result.chosen_label, result.measurement.items_per_s)
    """
    started = time.monotonic()
    progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))
    _check_numbers(time_budget_s=time_budget_s, window_s=window_s, max_windows=max_windows,
                   max_point_s=max_point_s, concurrency=concurrency, max_instances=max_instances)
    source = Path(repository)
    target = _target(source, out)
    configs = read_repository(source)
    pipeline = find_pipeline(configs, model)
    goal = Objective(objective, p99_budget_ms)
    items, items_text = _sample_items(configs, pipeline, inputs)
    if objective == "latency" and concurrency is None:
        concurrency = 1
    space, start = _search_space(configs, pipeline, concurrency, max_instances)
    if out is not None:
        shutil.copytree(source, target, symlinks=True)  # copy first, then write only there
    progress(f"tune: serving a scratch copy of {source} ({pipeline.ensemble}: "
             f"{len(pipeline.steps)} steps); sending {items_text}")
    work = session_dir(None)
    session = ServedSession(source, configs, pipeline, items, work)
    try:
        session.start()
        progress(f"tune: server ready in {session.startup_s:.1f} s; objective {objective}, "
                 f"time budget {time_budget_s:g} s")
        evaluator = PointEvaluator(session, window_s=window_s, max_windows=max_windows,
                                   max_point_s=max_point_s,
                                   deadline=started + time_budget_s - RESERVE_S)
        result = hill_climb(start, space.moves, evaluator.evaluate, goal, evaluator.time_left,
                            lambda trial: progress(progress_line(trial, pipeline, started,
                                                                 evaluator.extras)))
    finally:
        session.close()
        shutil.rmtree(work, ignore_errors=True)
    best = result.best
    _write_point(configs, pipeline, best.point, target)
    context = _report_context(
        source, target, pipeline, items_text, command, time_budget_s, started, session,
        limits=_limits_text(space, concurrency, window_s, max_windows, max_point_s),
        why=_why(result, goal))
    data = report.build(result, pipeline, goal, evaluator.extras, context)
    files = report.write(data, Path(report_dir) if report_dir else target.resolve().parent)
    progress(f"tune: chose {pipeline.label(best.point)}; wrote {target}; report "
             f"{files['markdown']} ({data['plot']})")
    return TuneResult(target, best.point, pipeline.label(best.point), best.measurement,
                      result, files)


def _target(source: Path, out) -> Path:
    """Where the tuned settings go: ``out`` (which must not exist yet) or ``source``."""
    if out is None:
        return source
    target = Path(out)
    if target.exists():
        raise ConfigError(f"--out {target} exists already; give a new directory (the tuned "
                          "copy is written there) or leave --out out to tune in place")
    return target


def _sample_items(configs, pipeline: ServedPipeline, inputs: Optional[Sequence[str]]):
    """(items to send, a description of them): from ``inputs`` or generated for the kind of
    input the pipeline takes."""
    kind = read_parameters(configs[pipeline.ensemble]).get(PARAM_INPUT_KIND, "")
    if inputs:
        return sample_inputs.read_inputs(inputs, kind)
    return sample_inputs.default_inputs(kind, *_operator_of(configs[pipeline.steps[0]]))


def _search_space(configs, pipeline: ServedPipeline, concurrency: Optional[int],
                  max_instances: Optional[int]) -> Tuple[Space, Point]:
    """The points allowed and the first one: the repository's own settings, at
    ``concurrency`` requests in flight (default: enough for its instances)."""
    current = read_point(configs, pipeline, 1)
    cores = usable_cores()
    start = dataclasses.replace(current, concurrency=concurrency
                                or _snap(2 * current.total_instances))
    space = Space(pipeline, cores, max_instances or max(2 * cores, current.total_instances),
                  concurrency)
    if not space.allowed(start):
        raise ConfigError(f"the repository's own settings use {start.total_instances} "
                          f"instances, more than max_instances={space.max_instances}; raise it")
    return space, start


def _write_point(configs, pipeline: ServedPipeline, point: Point, target: Path) -> None:
    """Write the configs that ``point`` changes into the repository at ``target``."""
    written = apply_point(configs, pipeline, point)
    for name, config in written.items():
        if config != configs[name]:
            write_config(target, name, config)
    read_repository(target)  # the written configs parse


def _limits_text(space: Space, concurrency: Optional[int], window_s: float, max_windows: int,
                 max_point_s: float) -> str:
    load = (f"{concurrency} in flight (fixed)" if concurrency else
            f"{min(CONCURRENCIES)}-{max(CONCURRENCIES)} in flight")
    return (f"max {space.max_instances} instances in all, threads 1-{space.cores}, {load}, "
            f"windows of ~{window_s:g} s, at most {max_windows} windows and {max_point_s:g} s "
            "per point")


def _report_context(source: Path, target: Path, pipeline: ServedPipeline, items_text: str,
                    command: str, time_budget_s: float, started: float,
                    session: ServedSession, limits: str, why: str) -> Dict[str, Any]:
    """The report's header: what was tuned, where, on what machine, how long it took."""
    reloads = session.reloads
    return {
        "pipeline": pipeline.ensemble, "repository": str(source), "written_to": str(target),
        "command": command or f"towhee_rt.tune.tune({str(source)!r}, ...)",
        "machine": machine.describe(), "inputs": items_text,
        "time_budget_s": time_budget_s, "seconds": round(time.monotonic() - started, 1),
        "startup_s": round(session.startup_s, 2),
        "reload_median_s": round(statistics.median(reloads), 2) if reloads else "-",
        "limits": limits, "why": why,
    }


def _operator_of(config) -> tuple:
    """(operator name, its params) of a step's config."""
    params = read_parameters(config)
    return (json.loads(params[PARAM_OPERATOR])["name"],
            json.loads(params.get(PARAM_PARAMS) or "{}"))


def _snap(value: int) -> int:
    """The smallest load on the concurrency ladder that is at least ``value`` (at least 4)."""
    return next((c for c in CONCURRENCIES if c >= max(4, value)), CONCURRENCIES[-1])


def _why(result: SearchResult, goal: Objective) -> str:
    best = result.best
    moves = result.accepted_moves
    path = ("kept the moves " + " -> ".join(f"'{m}'" for m in moves) if moves
            else "no move beat the repository's own settings")
    budget = (f" with p99 within {goal.p99_budget_ms:g} ms" if goal.p99_budget_ms else "")
    if not goal.feasible(best.measurement):
        budget = (f"; no point tried kept p99 within {goal.p99_budget_ms:g} ms, this one came "
                  "closest" if goal.p99_budget_ms else "; its requests failed")
    return (f"best {goal.name} ({goal.value(best.measurement)}){budget}: {path} "
            f"(a move is kept when it gains more than max({goal.min_gain:.0%}, the points' "
            f"mean window spread)); stopped because {result.stopped}.")


def _check_numbers(**values) -> None:
    for name, value in values.items():
        if value is None and name in ("concurrency", "max_instances"):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{name} must be a number > 0, got {value!r}")
