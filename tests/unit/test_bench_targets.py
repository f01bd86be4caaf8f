"""bench/targets.py: issue 15's targets decided from a run's rows (met / NOT met and why)."""
from __future__ import annotations

from bench import targets


def _row(system, rate, p50=10.0, concurrency=None, fmt=None, batch=None, config=None):
    settings = {}
    if concurrency is not None:
        settings["concurrency"] = concurrency
    if fmt:
        settings["format"] = fmt
    if batch:
        settings["batch_size"] = batch
    if config:
        settings["config"] = config
    return {"system": system, "items_per_s": rate, "p50_ms": p50, "settings": settings,
            "cpu_split": {"stub 0_image_decode_cv2_rgb_0_0": 0.2, "tritonserver": 0.05}}


def _result(int8_rate, lone_p50):
    int8 = targets.SERVED + "int8 (onnx_int8) x"
    rows = [_row(targets.HF, 10.0, p50=60.0),
            _row(targets.CEILING, 20.0, batch=8), _row(targets.INT8_CEILING, 60.0, batch=8),
            _row(targets.PEER, 15.0, concurrency=8),
            _row(targets.SERVED + "defaults", 18.0, concurrency=8, fmt="onnx"),
            _row(int8, int8_rate, concurrency=8, fmt="onnx_int8", config="x"),
            _row(targets.TUNED_LATENCY + ", 1 in flight", 30.0, p50=lone_p50, concurrency=1,
                 fmt="onnx_int8")]
    return {"rows": rows, "int8": {"x": {"gate_min_cosine": 0.995,
                                         "served": {"min_cosine": 0.993}}}}


def test_every_target_is_reported_with_its_figures():
    found = targets.pipeline_targets("resnet50", _result(55.0, 40.0))
    assert [t["met"] for t in found] == [True, True, True, True, True]
    assert "55.0 vs HF 10.0 items/s = 5.50x" in found[0]["figures"]


def test_not_met_targets_say_why():
    found = targets.pipeline_targets("resnet50", _result(45.0, 70.0))
    speed, _, int8_ceiling, _, latency = found
    assert not speed["met"] and "4.50x < 5.0x" in speed["reason"]
    assert "int8 model alone (ceiling) is 6.00x HF" in speed["reason"]
    assert not int8_ceiling["met"] and "0_image_decode_cv2_rgb_0_0 0.20" in int8_ceiling["reason"]
    assert not latency["met"] and "p50 70.0 ms > 60.0 ms" in latency["reason"]


def test_preprocess_gate():
    check = {"images": 12, "pipelines": {"clip": {
        "mean_cosine_between_images": 0.7,
        "cv2": {"min_cosine": 0.9995, "min_input_cosine": 0.999},
        "cv2 + decode": {"min_cosine": 0.998, "min_input_cosine": 0.99}}}}
    met = [t["met"] for t in targets.preprocess_targets(check)]
    assert met == [True, False]


def test_a_refused_int8_gate_is_a_target_not_met_and_lite0_has_no_latency_target():
    int8 = targets.SERVED + "int8-fast x -> SERVED onnx (int8 gate refused)"
    rows = [_row(targets.HF, 10.0, p50=60.0), _row(targets.CEILING, 20.0, batch=8),
            _row(targets.SERVED + "defaults", 18.0, concurrency=8, fmt="onnx"),
            _row(int8, 25.0, concurrency=8, fmt="onnx", config="x")]
    result = {"rows": rows, "int8": {"x": {
        "served_format": "onnx", "model_format": "onnx (onnx_int8 refused: min cosine 0.976)",
        "gate_min_cosine": None, "served": {"min_cosine": 0.999}}}}
    found = targets.pipeline_targets("lite0", result)
    refused = [t for t in found if "chosen by the accuracy gate" in t["target"]]
    assert len(refused) == 1 and not refused[0]["met"]
    assert "served onnx: onnx (onnx_int8 refused: min cosine 0.976)" in refused[0]["figures"]
    assert not [t for t in found if "int8 >= " in t["target"]]      # no int8 row was served
    assert not [t for t in found if "p50 at 1 in flight" in t["target"]]
