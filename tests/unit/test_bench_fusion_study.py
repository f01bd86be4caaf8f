"""Pure helpers of bench/fusion_study.py and bench/fusion_shapes.py (issue 23 item 2): figures
against hand computations."""
import numpy as np
import pytest

from bench import fusion_shapes, fusion_study


def test_cpu_seconds_per_item_converts_cores_over_the_window():
    # 1.5 cores for 10 s over 300 items = 50 ms per item; 0.3 cores -> 10 ms.
    out = fusion_study.cpu_seconds_per_item({"stub a": 1.5, "tritonserver": 0.3}, 10.0, 300)
    assert out == {"stub a": 50.0, "tritonserver": 10.0, "total": 60.0}


def test_cpu_seconds_per_item_refuses_no_items():
    with pytest.raises(ValueError):
        fusion_study.cpu_seconds_per_item({"x": 1.0}, 1.0, 0)


def test_min_cosine_is_the_worst_row():
    a = [np.array([1.0, 0.0]), np.array([0.0, 2.0])]
    b = [np.array([2.0, 0.0]), np.array([1.0, 1.0])]
    assert fusion_study.min_cosine(a, b) == pytest.approx(np.sqrt(0.5))
    assert fusion_study.min_cosine(a, a) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        fusion_study.min_cosine(a, [np.array([1.0, 0.0, 0.0])] * 2)


def test_resized_jpegs_shrink_the_shorter_side_only_downwards():
    cv2 = pytest.importorskip("cv2")
    big = np.full((600, 400, 3), 128, np.uint8)
    small = np.full((100, 150, 3), 128, np.uint8)
    data = [cv2.imencode(".jpg", img)[1].tobytes() for img in (big, small)]
    out = [cv2.imdecode(np.frombuffer(d, np.uint8), cv2.IMREAD_COLOR).shape[:2]
           for d in fusion_study.resized_jpegs(data, 235)]
    assert out == [(352, 235), (100, 150)]


def test_fused_model_source_compiles_and_does_not_import_towhee_rt():
    compile(fusion_shapes.FUSED_MODEL_PY, "model.py", "exec")
    assert "import towhee_rt" not in fusion_shapes.FUSED_MODEL_PY


def _point(ips, p50, p99, cpu):
    return {"items_per_s": ips, "p50_ms": p50, "p99_ms": p99, "cpu_ms_per_item": {"total": cpu}}


def test_summarize_takes_medians_and_both_ratios():
    points = [_point(40.0, 100, 200, 30.0), _point(50.0, 90, 150, 40.0),
              _point(45.0, 95, 300, 35.0)]
    s = fusion_study.summarize(points, ceiling_items_per_s=80.0, cores=2)
    assert s["items_per_s_median"] == 45.0 and s["rounds"] == 3
    assert s["p50_ms_median"] == 95.0 and s["p99_ms_median"] == 200.0
    assert s["ratio_to_ceiling"] == pytest.approx(45.0 / 80.0, abs=1e-3)
    # 2 cores / 35 ms per item = 57.14 items/s if CPU-bound; / 80 = 0.714
    assert s["cpu_bound_ratio_to_ceiling"] == pytest.approx(0.714, abs=1e-3)
    with pytest.raises(ValueError):
        fusion_study.summarize([], 80.0, 2)
