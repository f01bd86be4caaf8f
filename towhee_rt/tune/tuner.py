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
from .evaluator import (MIN_POINTS, PointEvaluator, budget_point_cap, min_budget_s,
                        progress_line)
from .search import Objective, SearchResult, hill_climb
from .session import ServedSession, session_dir
from .window import AGREEING_WINDOWS
from .space import (CONCURRENCIES, Point, ServedPipeline, Space, apply_point, find_pipeline,
                    read_point, record_concurrency, recorded_concurrency)

#: The search's default time limit, in seconds (server start-up and writing come on top).
DEFAULT_TIME_BUDGET_S = 300.0

#: How the keywords of :func:`tune` are spelled on the command line (for its error messages).
CLI_FLAGS = {"time_budget_s": "--time-budget", "window_s": "--window", "out": "--out",
             "concurrency": "--concurrency", "max_instances": "--max-instances",
             "p99_budget_ms": "--p99-budget-ms", "inputs": "--inputs",
             "report_dir": "--report-dir", "objective": "--objective", "model": "--model"}


@dataclasses.dataclass
class TuneResult:
    """What :func:`tune` did: where it wrote (``repository``; ``None`` when nothing was
    written, see ``outcome``), the chosen point and its figures, the search, the report."""

    repository: Optional[Path]
    chosen: Point
    chosen_label: str
    measurement: Any
    search: SearchResult
    report_files: Dict[str, Optional[str]]
    #: What happened, in a sentence: how many moves were tried, why the search stopped, what
    #: was written.
    outcome: str = ""

    @property
    def written(self) -> bool:
        """Whether tuned settings were written (at least one move was measured)."""
        return self.repository is not None


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
    ``concurrency``: fix the requests in flight instead of searching them.

    ``time_budget_s`` bounds the search (from the server being ready to the last point;
    the server's start-up and the writing come on top and are reported); a budget below
    :func:`~towhee_rt.tune.evaluator.min_budget_s` (four points of a warm-up and three windows
    of ``window_s``: 28 s at the default 2 s windows) is refused with a ``ConfigError``.
    The chosen settings are written into ``repository``'s configs, or into a copy at ``out``
    (which must not exist) -- only when at least one move was measured; otherwise nothing is
    written and ``result.repository`` is ``None`` (``result.outcome`` says why). The chosen
    requests in flight are recorded in the ensemble's config (parameter
    ``towhee_client_concurrency``): :class:`towhee_rt.Client` and ``dc(...).remote()`` on the
    served pipeline send that many at once when a call passes no ``concurrency`` (with the
    latency objective: ``concurrency``, default 1). The report
    (``tune_report.md/.json/.png``) goes into the written repository, or ``report_dir``.
    ``inputs``: files or directories to send (images, or text files of one input per line);
    default: the shipped sample photos for an image pipeline, a built-in set of sentences of
    varied length for a text pipeline, else the first operator's warm-up items. ``progress``
    gets one line per point (default: stderr).

    Example::

        result = towhee_rt.tune.tune("repo/", out="repo_tuned/", time_budget_s=240)
        print(result.chosen_label, result.measurement.items_per_s, result.outcome)
    """
    return _tune(repository, out=out, model=model, objective=objective,
                 p99_budget_ms=p99_budget_ms, max_instances=max_instances,
                 concurrency=concurrency, time_budget_s=time_budget_s, inputs=inputs,
                 report_dir=report_dir, window_s=window_s, max_windows=max_windows,
                 max_point_s=max_point_s, command=command, progress=progress)


def _tune(repository, *, out, model, objective, p99_budget_ms, max_instances, concurrency,
          time_budget_s, inputs, report_dir, window_s, max_windows, max_point_s, command,
          progress, cli: bool = False) -> TuneResult:
    """:func:`tune`; ``cli``: name the command-line flags in error messages, not keywords."""
    started = time.monotonic()
    progress = progress or (lambda line: print(line, file=sys.stderr, flush=True))

    def name(keyword: str) -> str:
        return CLI_FLAGS.get(keyword, keyword) if cli else keyword

    _check_numbers(name, time_budget_s=time_budget_s, window_s=window_s,
                   max_windows=max_windows, max_point_s=max_point_s, concurrency=concurrency,
                   max_instances=max_instances)
    _check_budget(name, time_budget_s, window_s, max_windows)
    source = Path(repository)
    target = _target(source, out, name("out"))
    configs = read_repository(source)
    pipeline = find_pipeline(configs, model)
    goal = Objective(objective, p99_budget_ms)
    items, items_text = _sample_items(configs, pipeline, inputs, name("inputs"))
    if objective == "latency" and concurrency is None:
        concurrency = 1
    space, start = _search_space(configs, pipeline, concurrency, max_instances,
                                 name("max_instances"))
    progress(f"tune: serving a scratch copy of {source} ({pipeline.ensemble}: "
             f"{len(pipeline.steps)} steps); sending {items_text}")
    work = session_dir(None)
    session = ServedSession(source, configs, pipeline, items, work)
    try:
        session.start()
        search_started = time.monotonic()
        progress(f"tune: server ready in {session.startup_s:.1f} s (not counted in the "
                 f"budget); objective {objective}, search time budget {time_budget_s:g} s")
        max_point_s = min(max_point_s, budget_point_cap(time_budget_s, window_s, max_windows,
                                                        session.startup_s))
        evaluator = PointEvaluator(session, window_s=window_s, max_windows=max_windows,
                                   max_point_s=max_point_s,
                                   deadline=search_started + time_budget_s,
                                   reload_guess_s=session.startup_s)
        foreseen = MIN_POINTS * evaluator.point_s()
        if foreseen > time_budget_s:
            progress(f"tune: warning: {name('time_budget_s')} {time_budget_s:g} s may be too "
                     f"small here: with model reloads as long as this server's start-up "
                     f"({session.startup_s:.1f} s), the start, one move and the confirmation "
                     f"need about {foreseen:.0f} s; a move is only tried when it and the "
                     "confirmation fit")
        result = hill_climb(start, space.moves, evaluator.evaluate, goal, evaluator.time_left,
                            lambda trial: progress(progress_line(trial, pipeline, started,
                                                                 evaluator.extras)),
                            confirm_time_left=lambda: evaluator.time_left(points=2))
        search_s = time.monotonic() - search_started
    finally:
        session.close()
        shutil.rmtree(work, ignore_errors=True)
    best = result.best
    outcome = outcome_text(result, goal)
    written = bool(result.moves_measured)
    if written:
        if out is not None:
            shutil.copytree(source, target, symlinks=True)  # the user's repository stays as it was
        _write_point(configs, pipeline, best.point, target)
        outcome += (f" Wrote the chosen settings to {target}, with {best.point.concurrency} "
                    f"requests in flight recorded for the client (towhee_rt.Client and "
                    f"dc(...).remote() send that many at once unless told otherwise).")
    else:
        outcome += (" Nothing was written: with no move measured there is nothing to "
                    "compare the repository's settings with (raise the time budget).")
    context = _report_context(
        source, target if written else None, pipeline, items_text, command, time_budget_s,
        started, search_s, session,
        limits=_limits_text(space, concurrency, window_s, max_windows, max_point_s),
        why=_why(result, goal), outcome=outcome)
    data = report.build(result, pipeline, goal, evaluator.extras, context)
    where = Path(report_dir) if report_dir else (target if written else None)
    files: Dict[str, Optional[str]] = report.write(data, where) if where else {}
    shown = (f"report {files['markdown']} ({data['plot']})" if files else
             f"no report written (pass {name('report_dir')} to keep one)")
    progress(f"tune: {outcome} {shown}")
    return TuneResult(target if written else None, best.point, pipeline.label(best.point),
                      best.measurement, result, files, outcome)


def _check_budget(name, time_budget_s: float, window_s: float, max_windows: int) -> None:
    """Refuse a time budget too small for the search to conclude anything."""
    least = min_budget_s(window_s, max_windows)
    if time_budget_s < least:
        raise ConfigError(
            f"{name('time_budget_s')} {time_budget_s:g} s is too small to conclude anything: "
            f"the search needs at least {least:g} s ({MIN_POINTS} points -- the start, one "
            f"move and the two of the final confirmation -- each a warm-up half-window and "
            f"{min(max_windows, AGREEING_WINDOWS)} windows of {window_s:g} s "
            f"({name('window_s')}); model reloads come on top)")


def outcome_text(result: SearchResult, goal: Objective) -> str:
    """How many moves were tried and measured, how many kept, and why the search stopped."""
    tried, measured = len(result.moves_tried), len(result.moves_measured)
    failed = f" ({tried - measured} failed)" if tried > measured else ""
    kept = len(result.accepted_moves)
    return (f"Tried {tried} move(s){failed}, kept {kept}; the search stopped because "
            f"{result.stopped}. Chose {goal.name} {goal.value(result.best.measurement)}.")


def _target(source: Path, out, flag: str = "out") -> Path:
    """Where the tuned settings go: ``out`` (which must not exist yet) or ``source``."""
    if out is None:
        return source
    target = Path(out)
    if target.exists():
        raise ConfigError(f"{flag} {target} exists already; give a new directory (the tuned "
                          "copy is written there) or leave --out out to tune in place")
    return target


def _sample_items(configs, pipeline: ServedPipeline, inputs: Optional[Sequence[str]],
                  flag: str = "inputs"):
    """(items to send, a description of them): from ``inputs`` or generated for the kind of
    input the pipeline takes."""
    kind = read_parameters(configs[pipeline.ensemble]).get(PARAM_INPUT_KIND, "")
    if inputs:
        return sample_inputs.read_inputs(inputs, kind, flag)
    return sample_inputs.default_inputs(kind, *_operator_of(configs[pipeline.steps[0]]))


def _search_space(configs, pipeline: ServedPipeline, concurrency: Optional[int],
                  max_instances: Optional[int], flag: str = "max_instances"
                  ) -> Tuple[Space, Point]:
    """The points allowed and the first one: the repository's own settings, at
    ``concurrency`` requests in flight (default: what a previous tuning recorded, else enough
    for its instances)."""
    current = read_point(configs, pipeline, 1)
    cores = usable_cores()
    start = dataclasses.replace(current, concurrency=concurrency
                                or recorded_concurrency(configs[pipeline.ensemble])
                                or _snap(2 * current.total_instances))
    space = Space(pipeline, cores, max_instances or max(2 * cores, current.total_instances),
                  concurrency)
    if not space.allowed(start):
        raise ConfigError(f"the repository's own settings use {start.total_instances} "
                          f"instances, more than {flag} {space.max_instances}; raise it")
    return space, start


def _write_point(configs, pipeline: ServedPipeline, point: Point, target: Path) -> None:
    """Write the configs that ``point`` changes into the repository at ``target``, and its
    requests in flight into the ensemble's config, for the client (:func:`record_concurrency`)."""
    written = apply_point(configs, pipeline, point)
    written[pipeline.ensemble] = record_concurrency(written[pipeline.ensemble], point.concurrency)
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


def _report_context(source: Path, target: Optional[Path], pipeline: ServedPipeline,
                    items_text: str, command: str, time_budget_s: float, started: float,
                    search_s: float, session: ServedSession, limits: str, why: str,
                    outcome: str) -> Dict[str, Any]:
    """The report's header: what was tuned, where, on what machine, how long it took."""
    reloads = session.reloads
    return {
        "pipeline": pipeline.ensemble, "repository": str(source),
        "written_to": str(target) if target else None, "outcome": outcome,
        "command": command or f"towhee_rt.tune.tune({str(source)!r}, ...)",
        "machine": machine.describe(), "inputs": items_text,
        "time_budget_s": time_budget_s, "seconds": round(time.monotonic() - started, 1),
        "search_seconds": round(search_s, 1),
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
    if moves:
        path = "kept the moves " + " -> ".join(f"'{m}'" for m in moves)
    elif result.moves_measured:
        path = (f"none of the {len(result.moves_measured)} move(s) measured beat the "
                "repository's own settings")
    else:
        path = "no move was measured, so the repository's own settings were not compared"
    budget = (f" with p99 within {goal.p99_budget_ms:g} ms" if goal.p99_budget_ms else "")
    if not goal.feasible(best.measurement):
        m = best.measurement
        budget = (f"; {m.errors} of its requests failed" if m.errors else
                  "; hardly any request was answered within its windows (the machine or the "
                  "server too slow for the window: raise --window)" if not m.items_per_s > 0
                  else f"; no point tried kept p99 within {goal.p99_budget_ms:g} ms, this one "
                  "came closest")
    return (f"best {goal.name} ({goal.value(best.measurement)}){budget}: {path} "
            f"(a move is kept when it gains more than max({goal.min_gain:.0%}, the points' "
            f"mean window spread)); stopped because {result.stopped}.")


def _check_numbers(name: Callable[[str], str], **values) -> None:
    for keyword, value in values.items():
        if value is None and keyword in ("concurrency", "max_instances"):
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
            raise ConfigError(f"{name(keyword)} must be a number > 0, got {value!r}")
