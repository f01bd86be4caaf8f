"""How the tuner foresees the next point's time (its measurement and its models' reload) and
whether it fits the time budget, and how long a point warms up: numbers in, no server (a
scripted load stands in for the steady load)."""
import os
import time
import types

from towhee_rt.tune.evaluator import PointEvaluator
from towhee_rt.tune.space import Point
from towhee_rt.tune.window import Window


def evaluator(deadline_in_s, reload_guess_s=0.0):
    return PointEvaluator(None, window_s=2.0, max_windows=8, max_point_s=40.0,
                          deadline=time.monotonic() + deadline_in_s,
                          reload_guess_s=reload_guess_s)


def test_before_any_reload_was_timed_the_guess_is_counted():
    e = evaluator(50, reload_guess_s=12.0)
    assert e.point_s() == 4 * 2.0 + 12.0  # four windows' worth, plus the guessed reload
    e.durations, e.reload_durations = [7.5], [0.0]  # the start: measured, nothing reloaded
    assert e.point_s() == 7.5 + 12.0
    assert not e.time_left()  # 3 x 19.5 s > 50 s
    assert e.time_left(points=2)  # 2 x 19.5 s < 50 s


def test_timed_reloads_replace_the_guess_and_the_longest_recent_ones_count():
    e = evaluator(80, reload_guess_s=30.0)
    e.durations, e.reload_durations = [7.0, 12.0, 9.0], [0.0, 5.0, 1.0]
    assert e.point_s() == 8.0 + 5.0  # longest measurement (7, 7, 8) + longest reload (5, 1)
    assert e.time_left()
    # A failed load counts its whole time as reload.
    e.durations.append(20.0)
    e.reload_durations.append(20.0)
    assert e.point_s() == 8.0 + 20.0
    assert not e.time_left()  # 3 x 28 s > 80 s


class ScriptedLoad:
    """Answers per window from a script (then steady): what a cold pipeline looks like."""

    def __init__(self, answers, steady=10):
        self.answers, self.steady, self.asked = list(answers), steady, []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def window(self, seconds):
        self.asked.append(seconds)
        requests = self.answers.pop(0) if self.answers else self.steady
        return Window(requests, seconds, [0.01] * requests)


class ScriptedSession:
    def __init__(self, load):
        self._load = load
        self.server = types.SimpleNamespace(pid=os.getpid())

    def apply(self, point):
        return 0.0

    def load(self, concurrency):
        return self._load


def test_the_warm_up_lasts_until_the_requests_in_flight_were_answered():
    # A cold pipeline: nothing for 3 warm-up windows, then 2, then 3 answers (4 in flight).
    load = ScriptedLoad([0, 0, 0, 2, 3])
    e = PointEvaluator(ScriptedSession(load), window_s=0.02, max_windows=8, max_point_s=10.0,
                       deadline=time.monotonic() + 60)
    m = e.evaluate(Point((), 4))
    assert len(load.asked) == 5 + 3  # 5 warm-up windows until 5 >= 4 answered, then 3 counted
    assert m.items_per_s == 10 / 0.02 and m.stable
    # A pipeline that never answers is measured once the warm-up cap (max_point_s / 2) passes.
    load = ScriptedLoad([0] * 1000, steady=0)
    e = PointEvaluator(ScriptedSession(load), window_s=0.02, max_windows=3, max_point_s=0.2,
                       deadline=time.monotonic() + 60)
    began = time.monotonic()
    m = e.evaluate(Point((), 4))
    assert m.items_per_s == 0 and time.monotonic() - began < 1.0
