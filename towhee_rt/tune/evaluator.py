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


def point_min_s(window_s: float, max_windows: int) -> float:
    """The least time one point takes: a warm-up half-window, then the windows that must agree
    (reloads come on top)."""
    return (0.5 + min(max_windows, AGREEING_WINDOWS)) * window_s


def min_budget_s(window_s: float, max_windows: int) -> float:
    """The smallest search time budget that can conclude: :data:`MIN_POINTS` points of
    :func:`point_min_s` each."""
    return MIN_POINTS * point_min_s(window_s, max_windows)


class PointEvaluator:
    """Measures points on ``session``: each in windows of ``window_s`` seconds (after a warm-up
    half-window), at most ``max_windows`` windows and ``max_point_s`` seconds, never past
    ``deadline`` (a :func:`time.monotonic` time)."""

    def __init__(self, session: ServedSession, *, window_s: float, max_windows: int,
                 max_point_s: float, deadline: float):
        self.session = session
        self.window_s = window_s
        self.max_windows = max_windows
        self.max_point_s = max_point_s
        self.deadline = deadline
        #: Seconds each point took, in order.
        self.durations: List[float] = []
        #: Point -> ``reload_s`` and ``other_load_cores`` (the report's extra columns).
        self.extras: Dict[Point, dict] = {}

    def evaluate(self, point: Point) -> PointMeasurement:
        """Serve ``point``'s settings and measure them under steady load."""
        began = time.monotonic()
        try:
            reload_s = self.session.apply(point)
            with self.session.load(point.concurrency) as load:
                load.window(self.window_s / 2)  # warm-up: the load settles, not counted
                other = machine.OtherLoad(self.session.server.pid)
                result = measure(lambda: load.window(self.window_s), self.window_s,
                                 self.max_windows,
                                 min(self.deadline, time.monotonic() + self.max_point_s))
                other_cores = other.cores()
        finally:
            self.durations.append(time.monotonic() - began)
        self.extras[point] = {"reload_s": round(reload_s, 2),
                              "other_load_cores": _round(other_cores)}
        return result

    def time_left(self) -> bool:
        """Whether a point as long as the longest of the last three still fits, with the two
        points of the final confirmation after it."""
        needed = 3 * max(self.durations[-3:], default=self.window_s * 4)
        return time.monotonic() + needed < self.deadline


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
