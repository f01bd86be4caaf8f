"""The tuner end to end on a small image pipeline: a short search on the real server writes a
valid tuned copy whose settings are the reported chosen point, a server started on that copy
answers like the local pipeline and gives the client the chosen requests in flight as its
default, and the report files name the chosen point."""
import json

import numpy as np
import pytest

import towhee_rt as towhee
from towhee_rt.triton.config import read_repository, to_pbtxt
from towhee_rt.tune import tune
from towhee_rt.tune.space import find_pipeline, read_point

from ..conftest import GOOD_SHAPES

pytestmark = pytest.mark.integration
#: The search's time budget: the start, a move or two and the confirmation, with reloads.
BUDGET_S = 60


@pytest.fixture(scope="module")
def tuned(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    pipe = (towhee.dummy_input().image_decode.cv2_rgb()
            .image_embedding.timm(model_name="test_resnet", pretrained=False,
                                  op_config={"instance_count": 1})
            .as_function())
    repo = towhee.build_model_repo(pipe, root / "repo").path
    before = {name: to_pbtxt(c) for name, c in read_repository(repo).items()}
    lines = []
    result = tune(repo, out=root / "tuned", time_budget_s=BUDGET_S, window_s=1.0,
                  max_windows=4, max_point_s=10, max_instances=3, progress=lines.append)
    return pipe, repo, before, result, lines, root


def test_the_tuned_copy_holds_the_chosen_settings_and_the_original_is_untouched(tuned):
    pipe, repo, before, result, lines, root = tuned
    assert {name: to_pbtxt(c) for name, c in read_repository(repo).items()} == before
    configs = read_repository(root / "tuned")  # parses with Triton's protobuf
    pipeline = find_pipeline(configs)
    written = read_point(configs, pipeline, result.chosen.concurrency)
    assert written == result.chosen
    assert written.total_instances <= 3
    assert configs["pipeline"].max_batch_size <= min(configs[s].max_batch_size
                                                     for s in pipeline.steps)
    assert result.measurement.items_per_s > 0
    # One progress line per point tried, and a few points within the budget.
    points = [line for line in lines if line.startswith("tune [")]
    assert len(points) == len(result.search.trials) >= 2


def test_the_report_names_the_chosen_point(tuned):
    _, _, _, result, _, root = tuned
    files = result.report_files
    assert result.written and files["markdown"] == str(root / "tuned" / "tune_report.md")
    assert not list(root.glob("tune_report*"))  # never beside the source repository
    report = json.loads((root / "tuned" / "tune_report.json").read_text())
    assert report["chosen"]["point"] == result.chosen.to_dict()
    assert report["chosen"]["settings"] == result.chosen_label
    assert len(report["points"]) == len(result.search.trials)
    # The budget covers the search; a reload slower than foreseen may overrun it a little.
    assert report["search_seconds"] <= BUDGET_S + 10
    assert report["moves_tried"] >= 1 and f"Tried {report['moves_tried']} move(s)" in \
        report["outcome"]
    assert "sample photos chelsea.jpg, coffee.jpg" in report["inputs"]
    text = (root / "tuned" / "tune_report.md").read_text()
    assert result.chosen_label in text and "| # | move | settings |" in text
    assert (root / "tuned" / "tune_report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_server_on_the_tuned_copy_answers_like_the_local_pipeline(tuned, good_dir):
    pipe, _, _, result, _, root = tuned
    images = [str(good_dir / name) for name in list(GOOD_SHAPES)[:4]]
    local = pipe(images)
    with towhee.serve(root / "tuned", grpc_port=0, http_port=0, metrics_port=0) as server:
        with towhee.Client(server.grpc_url) as client:
            served = client.infer(images, mode="async_infer", concurrency=4)
            # The chosen requests in flight reached the client as its default.
            assert client.concurrency == result.chosen.concurrency
    for got, want in zip(served, local):
        scale = float(np.max(np.abs(want))) or 1.0
        assert float(np.max(np.abs(got - want))) / scale <= 1e-5
