"""Measuring the points of a search on a served session, within a deadline.

:class:`PointEvaluator` holds what the search shares between points, explicitly: the session,
the time limits, how long each point took (to tell whether another fits), and the figures
kept beside each measurement for the report (reload time, other load on the machine).
"""
from __future__ import annotations

import time
from typing import Dict, List, Optional

from . import machine
from .search import CONFIRM, Trial
from .session import ServedSession
from .space import Point, ServedPipeline
from .window import AGREEING_WINDOWS, PointMeasurement, measure

#: Points a search must measure to conclude anything: the start, one move, and the two
#: points of the final confirmation (the start and the chosen one again).
MIN_POINTS = 4
#: Points a time budget is shared among when it caps each point's measurement: the start, two
#: moves and the two points of the confirmation (see :func:`budget_point_cap`).
BUDGET_POINTS = MIN_POINTS + 1


def point_min_s(window_s: float, max_windows: int) -> float:
    """The least time one point takes: a warm-up half-window, then the windows that must agree
    (reloads come on top)."""
    return (0.5 + min(max_windows, AGREEING_WINDOWS)) * window_s


def min_budget_s(window_s: float, max_windows: int) -> float:
    """The smallest search time budget that can conclude: :data:`MIN_POINTS` points of
    :func:`point_min_s` each."""
    return MIN_POINTS * point_min_s(window_s, max_windows)


def budget_point_cap(time_budget_s: float, window_s: float, max_windows: int,
                     reload_s: float) -> float:
    """The most one point may spend measuring so that ``time_budget_s`` holds
    :data:`BUDGET_POINTS` points, each but the first after a model reload of ``reload_s``;
    never less than :func:`point_min_s`.

    Without this cap a point that never settles (windows on a busy or noisy machine disagree
    by more than 10%) runs to its window limit, and a small budget is spent on the start
    alone: a point capped here is reported as not stable, and the search's noise margin (the
    points' window spread) and the final confirmation keep such points from deciding alone.
    """
    share = (time_budget_s - (BUDGET_POINTS - 1) * reload_s) / BUDGET_POINTS
    return max(point_min_s(window_s, max_windows), share)


class PointEvaluator:
    """Measures points on ``session``: each in windows of ``window_s`` seconds (after a warm-up
    half-window), at most ``max_windows`` windows and ``max_point_s`` seconds, never past
    ``deadline`` (a :func:`time.monotonic` time)."""

    def __init__(self, session: ServedSession, *, window_s: float, max_windows: int,
                 max_point_s: float, deadline: float, reload_guess_s: float = 0.0):
        self.session = session
        self.window_s = window_s
        self.max_windows = max_windows
        self.max_point_s = max_point_s
        self.deadline = deadline
        #: What a model reload is expected to take before one was timed (the server's
        #: start-up, which loads every model, is the tuner's guess).
        self.reload_guess_s = reload_guess_s
        #: Seconds each point took, in order (its reload included).
        self.durations: List[float] = []
        #: Seconds the reload of each point's changed models took (0: nothing changed).
        self.reload_durations: List[float] = []
        #: Point -> ``reload_s`` and ``other_load_cores`` (the report's extra columns).
        self.extras: Dict[Point, dict] = {}

    def evaluate(self, point: Point) -> PointMeasurement:
        """Serve ``point``'s settings and measure them under steady load."""
        began, reload_s = time.monotonic(), None
        try:
            reload_s = self.session.apply(point)
            with self.session.load(point.concurrency) as load:
                self._warm_up(load, point.concurrency)
                other = machine.OtherLoad(self.session.server.pid)
                result = measure(lambda: load.window(self.window_s), self.window_s,
                                 self.max_windows,
                                 min(self.deadline, time.monotonic() + self.max_point_s))
                other_cores = other.cores()
        finally:
            took = time.monotonic() - began
            self.durations.append(took)
            # A point whose models failed to load spent its time loading them.
            self.reload_durations.append(took if reload_s is None else reload_s)
        self.extras[point] = {"reload_s": round(reload_s, 2),
                              "other_load_cores": _round(other_cores)}
        return result

    def _warm_up(self, load, concurrency: int) -> None:
        """Send load, not counted, for half a window and then until as many requests as are in
        flight have been answered (a model's first requests after a (re)load can take many
        windows; counted, they would measure the point at nearly nothing), for at most half
        of ``max_point_s``."""
        until = min(self.deadline, time.monotonic() + self.max_point_s / 2)
        window = load.window(self.window_s / 2)
        answered = window.requests + window.errors
        while answered < concurrency and time.monotonic() < until:
            window = load.window(min(self.window_s / 2, max(0.0, until - time.monotonic())))
            answered += window.requests + window.errors

    def point_s(self) -> float:
        """The time the next point is expected to take: its measurement as long as the
        longest of the last three, plus a reload as long as the longest of the last three
        (before any was timed: :attr:`reload_guess_s`)."""
        measured = [d - r for d, r in zip(self.durations, self.reload_durations)]
        reloads = [r for r in self.reload_durations if r > 0]
        return (max(measured[-3:], default=self.window_s * 4)
                + max(reloads[-3:], default=self.reload_guess_s))

    def time_left(self, points: int = 3) -> bool:
        """Whether ``points`` more points of :meth:`point_s` still fit before the deadline:
        3 (the default) for a move, which must leave room for the two points of the final
        confirmation; 2 for the confirmation itself."""
        return time.monotonic() + points * self.point_s() < self.deadline


def progress_line(trial: Trial, pipeline: ServedPipeline, started: float,
                  extras: Dict[Point, dict]) -> str:
    """One line about a measured point: its settings and figures, whether it was kept."""
    elapsed = time.monotonic() - started
    again = " (measured again)" if trial.move.startswith(CONFIRM) else ""
    head = f"tune [{trial.index:2d}] {elapsed:5.0f} s  {pipeline.label(trial.point)}{again}"
    m = trial.measurement
    if m is None:
        return f"{head}: failed ({trial.failure[:200]})"
    load = extras.get(trial.point, {}).get("other_load_cores")
    return (f"{head}: {m.items_per_s:.1f} items/s, p50 {m.p50_ms:.0f} ms, p99 "
            f"{m.p99_ms:.0f} ms, {m.windows} windows{'' if m.stable else ' (NOT stable)'}"
            f"{'' if load is None else f', other load {load:.2f} cores'}"
            f"{', ' + str(m.errors) + ' failed requests' if m.errors else ''}"
            f"{'  <- kept' if trial.accepted else ''}")


def _round(value: Optional[float]) -> Optional[float]:
    return None if value is None else round(value, 2)
