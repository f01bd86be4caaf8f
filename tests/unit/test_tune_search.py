"""The tuner's hill-climbing, fed numbers by a deterministic objective function (no server)."""
import math

import pytest

from towhee_rt.errors import ConfigError
from towhee_rt.tune.search import Objective, hill_climb
from towhee_rt.tune.window import PointMeasurement


def _m(rate, p50=10.0, p99=20.0, spread=0.0, errors=0):
    return PointMeasurement(rate, p50, p99, 3, True, spread, errors, 1.0)


def _grid_moves(point):
    x, y = point
    return [(f"x={x + d}", (x + d, y)) for d in (1, -1) if 0 <= x + d <= 6] + \
           [(f"y={y + d}", (x, y + d)) for d in (1, -1) if 0 <= y + d <= 6]


def _peak(point):
    """Items/s peaking at (4, 2); p99 grows with x."""
    x, y = point
    return _m(100 - 10 * abs(x - 4) - 10 * abs(y - 2), p99=10.0 * (x + 1))


def test_climbs_one_knob_at_a_time_to_the_peak_measuring_each_point_once():
    measured = []

    def evaluate(point):
        measured.append(point)
        return _peak(point)

    result = hill_climb((0, 0), _grid_moves, evaluate, Objective("throughput"))
    assert result.best.point == (4, 2)
    searched, confirmed = measured[:-2], measured[-2:]
    assert len(searched) == len(set(searched))  # never twice while searching
    assert confirmed == [(0, 0), (4, 2)]  # then the start and the chosen one, once more
    assert len(measured) < 49  # far from the whole grid
    assert result.accepted_moves == ["x=1", "x=2", "x=3", "x=4", "y=1", "y=2"]
    assert "no move" in result.stopped and "still won" in result.stopped


def test_a_gain_within_the_noise_is_not_kept():
    def evaluate(point):
        return _m(100.0 + 2.0 * point[0], spread=0.0)  # +2% per step: below the 3% floor

    assert hill_climb((0, 0), _grid_moves, evaluate, Objective()).best.point == (0, 0)

    def noisy(point):
        return _m(100.0 * 1.06 ** point[0], spread=0.08)  # +6%, but windows 8% apart

    assert hill_climb((0, 0), _grid_moves, noisy, Objective()).best.point == (0, 0)
    assert hill_climb((0, 0), _grid_moves, lambda p: _m(100.0 * 1.06 ** p[0]),
                      Objective()).best.point == (6, 0)


def test_the_p99_budget_rules_out_points_and_leads_back_within_it():
    result = hill_climb((6, 2), _grid_moves, _peak, Objective("throughput", p99_budget_ms=35))
    assert result.best.point == (2, 2)  # x <= 2 keeps p99 <= 35 ms; the peak is at x = 4
    assert Objective("throughput", 35).feasible(result.best.measurement)


def test_latency_minimises_p50():
    def evaluate(point):
        return _m(50.0, p50=10.0 + abs(point[0] - 1) + abs(point[1] - 5))

    assert hill_climb((4, 4), _grid_moves, evaluate, Objective("latency")).best.point == (1, 5)


def test_time_running_out_stops_the_search_with_the_start_measured():
    calls = []
    result = hill_climb((0, 0), _grid_moves, lambda p: calls.append(p) or _peak(p),
                        Objective(), time_left=lambda: False)
    assert calls == [(0, 0)] and result.best.point == (0, 0)
    assert result.stopped == "the time budget ran out"


def test_a_point_that_fails_is_recorded_and_the_search_goes_on():
    def evaluate(point):
        if point == (1, 0):
            raise RuntimeError("model did not load")
        return _peak(point)

    result = hill_climb((0, 0), _grid_moves, evaluate, Objective())
    failed = [t for t in result.trials if t.failure]
    assert [t.point for t in failed] == [(1, 0)] and "did not load" in failed[0].failure
    assert result.best.point == (4, 2)  # around it, through (1, 1)


def test_failed_requests_or_a_bad_start_are_never_chosen():
    objective = Objective()
    assert not objective.improves(_m(500.0, errors=1), _m(10.0))
    with pytest.raises(ConfigError, match="own settings could not be measured"):
        hill_climb((0, 0), _grid_moves, lambda p: 1 / 0, objective)
    with pytest.raises(ConfigError, match="objective"):
        Objective("fastest")
    assert math.isinf(Objective().noise(_m(1.0, spread=math.inf), _m(1.0)))


def test_a_lucky_measurement_is_not_kept_when_measured_again_beside_the_start():
    """The winner's curse: (1, 0) measured 20% better once, then no better than the start."""
    seen = {}

    def evaluate(point):
        seen[point] = seen.get(point, 0) + 1
        if point == (1, 0) and seen[point] == 1:
            return _m(120.0)
        return _m(100.0)

    result = hill_climb((0, 0), _grid_moves, evaluate, Objective())
    assert result.best.point == (0, 0)
    assert [t.move for t in result.trials[-2:]] == ["confirm: the start again",
                                                     "confirm: chosen again"]
    assert result.best is result.trials[-2] and result.accepted_moves == ["x=1"]
    assert "the repository's own settings are kept" in result.stopped
    without = hill_climb((0, 0), _grid_moves, lambda p: _m(120.0 if p == (1, 0) else 100.0),
                         Objective(), confirm=False)
    assert without.best.point == (1, 0)


def test_the_result_counts_the_moves_and_says_why_it_stopped():
    result = hill_climb((0, 0), _grid_moves, _peak, Objective("throughput"))
    assert len(result.moves_tried) == len(result.trials) - 3  # not the start nor confirmations
    assert result.moves_measured == result.moves_tried
    assert result.stopped.startswith("converged: no move")
    none = hill_climb((0, 0), lambda p: [], _peak, Objective("throughput"))
    assert none.moves_tried == [] and none.stopped == "there was no move to try"
    out_of_time = hill_climb((0, 0), _grid_moves, _peak, Objective("throughput"),
                             time_left=lambda: False)
    assert out_of_time.moves_tried == [] and "time budget" in out_of_time.stopped


def test_no_time_left_for_the_confirmation_keeps_the_start_without_overrunning():
    measured = []

    def evaluate(point):
        measured.append(point)
        return _peak(point)

    result = hill_climb((0, 0), _grid_moves, evaluate, Objective("throughput"),
                        time_left=lambda: len(measured) < 3, confirm_time_left=lambda: False)
    assert measured == [(0, 0), (1, 0), (2, 0)]  # no point measured again
    assert result.best.point == (0, 0) and result.best is result.trials[0]
    assert "no time was left to measure the chosen point again" in result.stopped
    assert "repository's own settings are kept" in result.stopped


def test_without_time_to_confirm_an_unusable_start_gives_way_to_a_usable_point():
    def evaluate(point):
        x, _ = point
        return _m(0.0) if x == 0 else _m(50.0 + x)  # the start answers nothing

    result = hill_climb((0, 0), _grid_moves, evaluate, Objective("throughput"),
                        time_left=lambda: True, confirm_time_left=lambda: False)
    assert result.best.point != (0, 0) and result.best.measurement.items_per_s > 0
    assert "kept unconfirmed, as the start was not usable" in result.stopped
    assert not any(t.move.startswith("confirm:") for t in result.trials)
