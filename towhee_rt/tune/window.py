"""Measuring one point in windows of requests, repeated until the last
:data:`AGREEING_WINDOWS` agree on throughput within :data:`TOLERANCE`, or a cap on windows or
time is reached (the point is then reported as not stable).

What a window runs is given as a function, so the rule is tested on plain numbers.
"""
from __future__ import annotations

import dataclasses
import math
import statistics
import time
from typing import Callable, List, Sequence

#: Windows that must agree, and how closely: (max - min) <= TOLERANCE * median of their rates.
AGREEING_WINDOWS = 3
TOLERANCE = 0.10


@dataclasses.dataclass(frozen=True)
class Window:
    """One window: ``requests`` answered (one item each) within ``seconds``, their
    latencies, and how many failed."""

    requests: int
    seconds: float
    latencies: Sequence[float]
    errors: int = 0

    @property
    def items_per_s(self) -> float:
        return self.requests / self.seconds if self.seconds > 0 else 0.0


def spread(rates: Sequence[float]) -> float:
    """How far apart ``rates`` are: (max - min) / median; 0 for fewer than two."""
    if len(rates) < 2:
        return 0.0
    middle = statistics.median(rates)
    return (max(rates) - min(rates)) / middle if middle > 0 else math.inf


def is_stable(rates: Sequence[float], count: int = AGREEING_WINDOWS,
              tolerance: float = TOLERANCE) -> bool:
    """Whether the last ``count`` window rates agree within ``tolerance`` (see :func:`spread`)."""
    return len(rates) >= count and spread(rates[-count:]) <= tolerance


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) of ``values``, nearest rank; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclasses.dataclass(frozen=True)
class PointMeasurement:
    """A point's figures, from its last :data:`AGREEING_WINDOWS` windows (or fewer)."""

    items_per_s: float
    p50_ms: float
    p99_ms: float
    windows: int
    stable: bool
    #: (max - min) / median of the windows the figures come from.
    spread: float
    errors: int
    seconds: float

    @property
    def ok(self) -> bool:
        """Every request answered (a point with failures is never chosen)."""
        return self.errors == 0 and self.items_per_s > 0

    def to_dict(self) -> dict:
        """JSON-ready figures (rounded)."""
        out = dataclasses.asdict(self)
        for key in ("items_per_s", "p50_ms", "p99_ms", "spread", "seconds"):
            out[key] = None if math.isnan(out[key]) else round(out[key], 3)
        return out


def summarise(windows: Sequence[Window], seconds: float,
              count: int = AGREEING_WINDOWS, tolerance: float = TOLERANCE) -> PointMeasurement:
    """The :class:`PointMeasurement` of a point measured in ``windows`` (in ``seconds`` overall)."""
    rates = [w.items_per_s for w in windows]
    last = list(windows[-count:])
    latencies = [s for w in last for s in w.latencies]
    return PointMeasurement(
        items_per_s=statistics.median(w.items_per_s for w in last) if last else 0.0,
        p50_ms=percentile(latencies, 50) * 1000, p99_ms=percentile(latencies, 99) * 1000,
        windows=len(windows), stable=is_stable(rates, count, tolerance),
        spread=spread([w.items_per_s for w in last]), errors=sum(w.errors for w in windows),
        seconds=seconds)


def measure(run_window: Callable[[], Window], window_s: float, max_windows: int,
            deadline: float, clock: Callable[[], float] = time.monotonic) -> PointMeasurement:
    """Run windows (``run_window()``, about ``window_s`` seconds each) until the last
    :data:`AGREEING_WINDOWS` agree, ``max_windows`` ran, or ``clock()`` passes ``deadline``;
    at least one window always runs. A window with failed requests ends the point (its
    figures would be meaningless)."""
    started = clock()
    windows: List[Window] = []
    while True:
        window = run_window()
        windows.append(window)
        if window.errors or is_stable([w.items_per_s for w in windows]):
            break
        if len(windows) >= max_windows or clock() + window_s > deadline:
            break
    return summarise(windows, clock() - started)
