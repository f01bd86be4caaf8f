"""The tuner's run around the search, on a fake server: the time budget (refused when too small
to conclude, errors naming the keyword or the CLI flag), nothing written when no move was
measured, the report inside the tuned copy, never beside the source repository, and the chosen
requests in flight recorded in the tuned ensemble for the client."""
import json

import pytest

from towhee_rt.errors import ConfigError
from towhee_rt.triton.config import read_repository, write_config
from towhee_rt.tune import cli as tune_cli
from towhee_rt.tune import tuner
from towhee_rt.tune.evaluator import budget_point_cap, min_budget_s, point_min_s
from towhee_rt.tune.window import PointMeasurement

from towhee_rt.tune.space import record_concurrency, recorded_concurrency

from .test_tune_space import DECODE, EMBED, tc


@pytest.fixture
def repo(tmp_path):
    repo = tmp_path / "repo"
    models = {DECODE.model_name: tc.operator_model_config(DECODE),
              EMBED.model_name: tc.operator_model_config(EMBED),
              "pipeline": tc.ensemble_config("pipeline", [DECODE, EMBED])}
    for name, config in models.items():
        (repo / name).mkdir(parents=True)
        write_config(repo, name, config)
    return repo


class FakeSession:
    def __init__(self, source, configs, pipeline, items, work):
        self.items, self.startup_s, self.reloads = items, 0.0, []

    def start(self):
        self.startup_s = 1.5

    def close(self):
        pass


def fake_server(monkeypatch, time_left):
    """Serve nothing: every point measures 10 items/s per request in flight (up to 8)."""
    class FakeEvaluator:
        def __init__(self, session, **limits):
            self.extras = {}

        def evaluate(self, point):
            return PointMeasurement(10.0 * min(point.concurrency, 8), 10.0, 20.0, 3, True,
                                    0.0, 0, 1.0)

        def point_s(self):
            return 1.0

        def time_left(self, points=3):
            return time_left()

    monkeypatch.setattr(tuner, "ServedSession", FakeSession)
    monkeypatch.setattr(tuner, "PointEvaluator", FakeEvaluator)


def test_the_least_budget_comes_from_the_window_and_the_confirmation():
    assert point_min_s(2.0, 8) == 7.0  # a warm-up half-window, 3 windows that agree
    assert min_budget_s(2.0, 8) == 28.0  # start, one move, the two confirmation points
    assert min_budget_s(0.5, 2) == 5.0


def test_a_small_budget_caps_each_point_so_that_moves_still_fit():
    # 60 s with 4 s reloads: five points (start, two moves, the confirmation's two) of 8.8 s
    # each and four reloads; on a noisy machine an unsettled point would take 8 windows (~17 s)
    # and leave no room for a move.
    assert budget_point_cap(60.0, 2.0, 8, 4.0) == pytest.approx(8.8)
    # The default budget leaves the default 40 s per point as it is.
    assert min(40.0, budget_point_cap(300.0, 2.0, 8, 4.0)) == 40.0
    # Never below a warm-up and three windows, however slow the reloads.
    assert budget_point_cap(28.0, 2.0, 8, 10.0) == point_min_s(2.0, 8)


def test_a_budget_too_small_to_conclude_is_refused_naming_the_keyword_or_flag(repo, capsys):
    with pytest.raises(ConfigError, match=r"time_budget_s 1 s is too small.*at least 28 s"):
        tuner.tune(repo, time_budget_s=1)
    with pytest.raises(ConfigError, match=r"^time_budget_s must be a number > 0"):
        tuner.tune(repo, time_budget_s=0)
    assert tune_cli.main([str(repo), "--time-budget", "1"]) == 2
    err = capsys.readouterr().err
    assert "--time-budget 1 s is too small" in err and "28 s" in err
    assert "time_budget_s" not in err
    assert tune_cli.main([str(repo), "--time-budget", "6", "--window", "0.5"]) == 2
    assert "at least 7 s" in capsys.readouterr().err
    assert tune_cli.main([str(repo), "--max-instances", "2"]) == 2
    assert "--max-instances 2" in capsys.readouterr().err
    assert sorted(p.name for p in repo.parent.iterdir()) == ["repo"]


def test_nothing_is_written_nor_claimed_when_no_move_was_measured(repo, monkeypatch, capsys):
    fake_server(monkeypatch, time_left=lambda: False)
    before = sorted(p.name for p in repo.parent.iterdir())
    result = tuner.tune(repo, out=repo.parent / "tuned", progress=lambda line: None)
    assert not result.written and result.repository is None and result.report_files == {}
    assert "Tried 0 move(s)" in result.outcome and "time budget ran out" in result.outcome
    assert "Nothing was written" in result.outcome and "beat" not in result.outcome
    assert sorted(p.name for p in repo.parent.iterdir()) == before  # no copy, no report
    # Asked for, the report says what happened instead of "no move beat the start".
    report_dir = repo.parent / "reports"
    result = tuner.tune(repo, out=repo.parent / "tuned", report_dir=report_dir,
                        progress=lambda line: None)
    text = (report_dir / "tune_report.md").read_text()
    assert "Nothing written" in text and "no move was measured" in text
    assert "beat the repository" not in text
    assert not (repo.parent / "tuned").exists()
    # The command line says so and fails.
    assert tune_cli.main([str(repo), "--out", str(repo.parent / "tuned")]) == 1
    assert "Nothing was written" in capsys.readouterr().err


def test_the_report_goes_inside_the_tuned_copy_and_counts_the_moves(repo, monkeypatch):
    fake_server(monkeypatch, time_left=lambda: True)
    lines = []
    result = tuner.tune(repo, out=repo.parent / "tuned", progress=lines.append)
    tuned = repo.parent / "tuned"
    assert result.written and result.repository == tuned
    assert result.chosen.concurrency >= 8
    read_repository(tuned)  # the report files beside the models do not disturb it
    assert result.report_files["markdown"] == str(tuned / "tune_report.md")
    assert not list(repo.parent.glob("tune_report*")) and not list(repo.glob("tune_report*"))
    report = json.loads((tuned / "tune_report.json").read_text())
    tried = len(result.search.moves_tried)
    assert report["moves_tried"] == tried > 1
    assert f"Tried {tried} move(s)" in result.outcome and "converged" in result.outcome
    text = (tuned / "tune_report.md").read_text()
    assert f"({tried} moves tried)" in text and "outside the budget" in text
    assert "built-in" not in text and "Inputs:" in text
    assert any("not counted in the budget" in line for line in lines)


def test_the_chosen_concurrency_is_recorded_for_the_client_and_starts_the_next_tuning(
        repo, monkeypatch):
    fake_server(monkeypatch, time_left=lambda: True)
    result = tuner.tune(repo, out=repo.parent / "tuned", progress=lambda line: None)
    tuned = read_repository(repo.parent / "tuned")
    # 10 items/s per request in flight up to 8: 8 is the least load that reaches the top.
    assert result.chosen.concurrency == 8
    assert recorded_concurrency(tuned["pipeline"]) == 8
    assert "8 requests in flight recorded for the client" in result.outcome
    assert recorded_concurrency(read_repository(repo)["pipeline"]) is None  # source untouched
    # A repository that records a concurrency is tuned from there (not from the default 8).
    write_config(repo, "pipeline", record_concurrency(read_repository(repo)["pipeline"], 2))
    again = tuner.tune(repo, out=repo.parent / "tuned2", progress=lambda line: None)
    assert again.search.trials[0].point.concurrency == 2
    assert recorded_concurrency(read_repository(repo.parent / "tuned2")["pipeline"]) == \
        again.chosen.concurrency
    # Tuned in place, the ensemble is rewritten with the new value.
    in_place = tuner.tune(repo, concurrency=4, progress=lambda line: None)
    assert in_place.repository == repo and in_place.chosen.concurrency == 4
    assert recorded_concurrency(read_repository(repo)["pipeline"]) == 4
