"""Hill-climbing over one-knob moves, under an objective and a p99 budget.

From the current point, the moves are tried in order; the first that improves the objective by
more than the noise is kept and the moves start again from the new point (a point is never
measured twice); the search ends when no move from the kept point improves it, or when time
runs out. Then the chosen point and the start are measured again, back to back, and the start
is kept unless the chosen point still wins (one lucky measurement must not win the search).
This needs far fewer points than a grid: each knob is tried from wherever the others stand. The measurements come from a function, so the logic is tested on plain numbers.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, Hashable, List, Optional, Sequence, Tuple, TypeVar

from ..errors import ConfigError
from .window import PointMeasurement

P = TypeVar("P", bound=Hashable)
OBJECTIVES = ("throughput", "latency")
#: A move is kept only when it gains more than this, or the points' own window spread.
MIN_GAIN = 0.03
#: How the final re-measurements are named among the trials.
CONFIRM = "confirm:"


@dataclasses.dataclass(frozen=True)
class Objective:
    """What "better" means: the most items/s (``throughput``) or the lowest p50
    (``latency``), among points whose p99 stays within ``p99_budget_ms`` (when given)."""

    name: str = "throughput"
    p99_budget_ms: Optional[float] = None
    min_gain: float = MIN_GAIN

    def __post_init__(self):
        if self.name not in OBJECTIVES:
            raise ConfigError(f"objective must be one of {', '.join(OBJECTIVES)}, got "
                              f"{self.name!r}")
        if self.p99_budget_ms is not None and not self.p99_budget_ms > 0:
            raise ConfigError(f"p99 budget must be a number of milliseconds > 0, got "
                              f"{self.p99_budget_ms!r}")

    def feasible(self, m: PointMeasurement) -> bool:
        """Every request answered, and the p99 within the budget."""
        return m.ok and (self.p99_budget_ms is None or m.p99_ms <= self.p99_budget_ms)

    def noise(self, a: PointMeasurement, b: PointMeasurement) -> float:
        """The relative difference below which ``a`` and ``b`` count as equal."""
        return max(self.min_gain, (a.spread + b.spread) / 2)

    def improves(self, new: PointMeasurement, old: PointMeasurement) -> bool:
        """Whether ``new`` beats ``old`` by more than the noise. A feasible point beats an
        infeasible one; between two over the budget, the lower p99 wins."""
        if self.feasible(new) != self.feasible(old):
            return self.feasible(new)
        if not new.ok:
            return False
        noise = self.noise(new, old)
        if not self.feasible(new):
            return new.p99_ms < old.p99_ms * (1 - noise)
        if self.name == "throughput":
            return new.items_per_s > old.items_per_s * (1 + noise)
        return new.p50_ms < old.p50_ms * (1 - noise)

    def value(self, m: PointMeasurement) -> str:
        """The objective's figure of ``m``, for the report."""
        if self.name == "throughput":
            return f"{m.items_per_s:.1f} items/s"
        return f"p50 {m.p50_ms:.1f} ms"


@dataclasses.dataclass
class Trial:
    """One measured point: how it was reached and what it gave."""

    index: int
    point: object
    move: str
    measurement: Optional[PointMeasurement]
    #: Set when the point could not be served (its config failed to load, ...).
    failure: str = ""
    accepted: bool = False


@dataclasses.dataclass
class SearchResult:
    """Every trial in order, the chosen one, and why the search stopped."""

    trials: List[Trial]
    best: Trial
    stopped: str

    @property
    def moves_tried(self) -> List[Trial]:
        """The trials of moves from the start (neither the start nor the confirmations)."""
        return [t for t in self.trials if t.index > 0 and not t.move.startswith(CONFIRM)]

    @property
    def moves_measured(self) -> List[Trial]:
        """The moves tried whose point could be measured (not failed)."""
        return [t for t in self.moves_tried if t.measurement is not None]

    @property
    def accepted_moves(self) -> List[str]:
        return [t.move for t in self.trials
                if t.accepted and t.index > 0 and not t.move.startswith(CONFIRM)]


def hill_climb(start: P, moves: Callable[[P], Sequence[Tuple[str, P]]],
               evaluate: Callable[[P], PointMeasurement], objective: Objective,
               time_left: Callable[[], bool] = lambda: True,
               on_trial: Optional[Callable[[Trial], None]] = None,
               confirm: bool = True,
               confirm_time_left: Callable[[], bool] = lambda: True) -> SearchResult:
    """Climb from ``start``; ``moves(point)`` gives (description, neighbour) pairs in the order
    to try, ``evaluate(point)`` measures one (an exception marks it failed: its message is
    kept, the search goes on), ``time_left()`` says whether another point fits the budget.
    ``start`` is always measured. ``on_trial`` sees each trial once measured. With
    ``confirm``, a chosen point other than ``start`` is measured again beside ``start`` and
    kept only if it still wins (see :func:`_confirm`); leave time for two more points.
    ``confirm_time_left()`` says whether they still fit: when they do not (a point took
    longer than foreseen), the start is kept rather than a point measured only once (the
    time budget is not overrun to confirm it), unless the start was not feasible and the
    chosen point is."""
    seen: Dict[P, Trial] = {}
    trials: List[Trial] = []

    def run(point: P, move: str) -> Trial:
        trial = Trial(len(trials), point, move, None)
        try:
            trial.measurement = evaluate(point)
        except Exception as exc:  # noqa: BLE001 - one unusable point must not end the search
            trial.failure = f"{type(exc).__name__}: {exc}"
        seen[point] = trial
        trials.append(trial)
        return trial

    best = run(start, "start (the repository's settings)")
    if best.measurement is None:
        raise ConfigError(f"the repository's own settings could not be measured: "
                          f"{best.failure}")
    best.accepted = True
    if on_trial:
        on_trial(best)
    stopped = ""
    while not stopped:
        for move, point in moves(best.point):
            if point in seen:
                continue
            if not time_left():
                stopped = "the time budget ran out"
                break
            trial = run(point, move)
            if trial.measurement is not None and objective.improves(trial.measurement,
                                                                    best.measurement):
                trial.accepted = True
                best = trial
            if on_trial:
                on_trial(trial)
            if trial.accepted:
                break
        else:
            stopped = ("converged: no move from the chosen point improved it beyond the noise"
                       if any(t.index > 0 for t in trials) else "there was no move to try")
    if confirm and best is not trials[0]:
        if confirm_time_left():
            best, verdict = _confirm(trials[0], best, run, objective, on_trial)
        elif objective.feasible(best.measurement) and not objective.feasible(
                trials[0].measurement):
            verdict = ("no time was left to measure the chosen point again beside the start; "
                       "it is kept unconfirmed, as the start was not usable (failed requests, "
                       "none answered, or p99 over the budget)")
        else:
            best, verdict = trials[0], ("no time was left to measure the chosen point again "
                                        "beside the start, so the repository's own settings "
                                        "are kept (raise the time budget)")
        stopped += f"; {verdict}"
    return SearchResult(trials, best, stopped)


def _confirm(start: Trial, chosen: Trial, run: Callable[[object, str], Trial],
             objective: Objective, on_trial: Optional[Callable[[Trial], None]]):
    """Measure the start and the chosen point again, back to back, and keep the chosen one
    only if it still wins: the best of many noisy measurements is usually a lucky one (the
    winner's curse), and a tuner must not leave a repository slower than it found it."""
    start_again = run(start.point, f"{CONFIRM} the start again")
    chosen_again = run(chosen.point, f"{CONFIRM} chosen again")
    if chosen_again.measurement is not None and (
            start_again.measurement is None
            or objective.improves(chosen_again.measurement, start_again.measurement)):
        kept, verdict = chosen_again, "measured again beside the start, the chosen point still won"
    else:
        kept, verdict = start_again, ("measured again beside the start, the chosen point no "
                                      "longer won beyond the noise: the repository's own "
                                      "settings are kept")
    kept.accepted = True
    for trial in (start_again, chosen_again):
        if on_trial:
            on_trial(trial)
    return kept, verdict

