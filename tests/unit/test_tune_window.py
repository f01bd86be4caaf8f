"""The tuner's measurement windows: the stability rule, the caps, and the figures kept."""
import itertools
import math

import pytest

from towhee_rt.tune.window import Window, is_stable, measure, percentile, spread, summarise


def test_three_windows_must_agree_within_ten_percent():
    assert is_stable([10.0, 10.5, 9.8])
    assert is_stable([3.0, 10.0, 10.5, 9.8])  # the last three count
    assert not is_stable([10.0, 10.5])  # too few
    assert not is_stable([10.0, 12.0, 10.0])  # 20% apart
    assert spread([9.0, 10.0, 11.0]) == pytest.approx(0.2)


def test_percentile_is_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0 and percentile(values, 99) == 99.0
    assert percentile([5.0], 99) == 5.0 and math.isnan(percentile([], 50))


def _runner(rates, errors=()):
    """A one-second run_window whose k-th window runs at rates[k] items/s, latency 1/rate."""
    seen = []

    def run():
        k = len(seen)
        seen.append(k)
        rate = rates[min(k, len(rates) - 1)]
        return Window(int(rate), 1.0, [1 / rate] * int(rate), errors=1 if k in errors else 0)
    return run, seen


def test_windows_repeat_until_three_agree():
    run, seen = _runner([5.0, 20.0, 10.0, 10.4, 9.9, 50.0])
    m = measure(run, window_s=1.0, max_windows=8, deadline=math.inf)
    assert (m.windows, m.stable) == (5, True) and len(seen) == 5
    assert m.items_per_s == pytest.approx(10.0)
    assert m.p50_ms == pytest.approx(100.0, rel=0.05)


def test_a_point_that_never_settles_stops_at_the_cap_and_says_so():
    run, seen = _runner([10.0, 20.0] * 10)
    m = measure(run, window_s=1.0, max_windows=6, deadline=math.inf)
    assert (m.windows, m.stable) == (6, False) and len(seen) == 6


def test_time_caps_the_windows_but_one_always_runs():
    clock = itertools.count(0.0, 1.0).__next__  # one second per look at the clock
    run, seen = _runner([10.0, 20.0] * 10)
    m = measure(run, window_s=1.0, max_windows=50, deadline=-1.0, clock=clock)
    assert m.windows == 1 and not m.stable


def test_failed_requests_end_the_point():
    run, _ = _runner([10.0] * 10, errors={1})
    m = measure(run, window_s=1.0, max_windows=8, deadline=math.inf)
    assert m.windows == 2 and m.errors == 1 and not m.ok


def test_figures_come_from_the_last_three_windows():
    windows = [Window(10, 10.0, [1.0] * 10)] + [Window(10, 1.0, [0.1] * 10)] * 3
    m = summarise(windows, 13.0)
    assert m.items_per_s == 10.0 and m.p99_ms == pytest.approx(100.0) and m.stable
