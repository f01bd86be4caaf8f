"""bench/targets.py: issues 15 and 23's targets decided from a run's rows (met / NOT met and
why)."""
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
    # 45 items/s: decode 0.2 cores -> 4.44 ms/item, tritonserver 0.05 -> 1.11 ms/item
    assert not int8_ceiling["met"]
    assert "the rest 5.56 ms (decode stubs 4.44, tritonserver 1.11)" in int8_ceiling["reason"]
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


# ------------------------------------------------------------ issue 23: the ceiling's CPU budget
SPLIT = {"stub pipeline_1_image_embedding_timm_0_0": 0.6,
         "stub pipeline_1_image_embedding_timm_0_1": 0.5,
         "stub pipeline_0_image_decode_cv2_rgb_0_0": 0.2,
         "bench process (client)": 0.1, "tritonserver": 0.05}


def _ceiling_miss(ceiling_settings, split=SPLIT, cores=2):
    """One fp32 'x ceiling' line: served 100 items/s against a ceiling of 200."""
    served = _row(targets.SERVED + "defaults", 100.0, concurrency=8, fmt="onnx")
    served["cpu_split"] = dict(split)
    ceiling = _row(targets.CEILING, 200.0)
    ceiling["settings"] = dict(ceiling_settings)
    found = targets.pipeline_targets("resnet50", {"rows": [ceiling, served]}, cores=cores)
    (line,) = [t for t in found if t["target"] == "served fp32 >= 0.85x its ceiling"]
    assert not line["met"]
    return line["reason"]


def test_ceiling_miss_is_explained_by_the_cpu_budget_per_item():
    reason = _ceiling_miss({"batch_size": 8, "intra_op_threads": 2, "cpu_ms_per_item": 8.0})
    # 100 items/s: model 1.1 cores -> 11 ms/item; decode 2, client 1, tritonserver 0.5
    assert reason.startswith("0.50x; CPU per item 14.50 ms: model stubs 11.00 ms")
    assert "vs 8.00 ms for ONNX Runtime alone (ceiling, batch 8)" in reason
    assert "the rest 3.50 ms (decode stubs 2.00, client 1.00, tritonserver 0.50)" in reason
    # 2 cores x 1000 / 14.5 ms = 137.9 items/s = 0.69 x 200
    assert "even with both cores busy, 14.50 ms/item caps it at 138 items/s = 0.69x ceiling" \
        in reason
    assert "0.55 of 2 cores idle at that point" in reason       # 2 - 1.45 used


def test_ceiling_miss_with_cpu_to_spare_blames_idle_cores():
    small = {k: v / 2 for k, v in SPLIT.items()}                # 7.25 ms/item: 276 items/s
    reason = _ceiling_miss({"batch_size": 8, "cpu_ms_per_item": 3.0}, small, cores=2)
    assert "caps it at 276 items/s = 1.38x ceiling" in reason
    assert "so the miss is cores not used: 1.27 of 2 idle, 0.00 used by other processes" \
        in reason


def test_ceiling_reason_falls_back_without_the_ceiling_cpu():
    old = _ceiling_miss({"batch_size": 8, "intra_op_threads": 2})   # an older results.json
    assert "vs <= 10.00 ms for ONNX Runtime alone (ceiling, batch 8; its CPU was not " \
           "recorded in this run" in old                            # 2 threads / 200 items/s
    assert "model stubs 11.00 ms" in old and "caps it at 138 items/s" in old
    bare = _ceiling_miss({"batch_size": 8})
    assert "model stubs 11.00 ms (preprocessing, Triton I/O in); the rest" in bare
    assert _ceiling_miss({"batch_size": 8}, split={}) == "0.50x; no CPU split recorded for " \
                                                         "that point"


def test_all_targets_takes_the_cores_from_the_machine():
    rows = [_row(targets.CEILING, 200.0, batch=8),
            _row(targets.SERVED + "defaults", 100.0, concurrency=8, fmt="onnx")]
    results = {"machine": {"cores": 4}, "pipelines": {"resnet50": {"rows": rows}}}
    (line,) = targets.all_targets(results)
    # 0.25 cores / 100 items/s = 2.5 ms/item; 4 x 1000 / 2.5 = 1600 items/s
    assert "even with all 4 cores busy, 2.50 ms/item caps it at 1600 items/s = 8.00x" \
        in line["reason"]


# ---------------------------------------------------- issue 23: Infinity and LitServe peers
INF = "Infinity peer (infinity-emb, all-MiniLM-L6-v2), "
LIT = "LitServe peer (same ONNX + preprocessing, LitAPI batching), "


def _peer(system, rate, concurrency, min_cosine):
    row = _row(system, rate, concurrency=concurrency)
    row["settings"]["min_cosine"] = min_cosine
    row["cpu_split"] = {"python": 1.6, "bench process (client)": 0.1}
    return row


def _peer_result(served_rate, int8_rate=None, checks=True):
    rows = [_row(targets.SERVED + "defaults", served_rate, concurrency=8, fmt="onnx"),
            _peer(INF + "torch fp32", 70.0, 8, 1.0), _peer(INF + "torch fp32", 80.0, 16, 1.0),
            _peer(INF + "optimum ONNX int8", 150.0, 8, 0.83),
            _peer(LIT + "2 workers x 1 thread", 90.0, 16, 1.0)]
    if int8_rate:
        rows.append(_row(targets.SERVED + "int8 (onnx_int8)", int8_rate, concurrency=8,
                         fmt="onnx_int8", config="x"))
    if checks:
        result = {"rows": rows, "peer_checks": {
            r["system"]: {"min_cosine": r["settings"]["min_cosine"],
                          "passed": r["settings"]["min_cosine"] >= 0.99} for r in rows[1:5]}}
    else:  # no peer_checks: the row's note says it
        rows[3]["note"] = "correctness: min cosine 0.83 to x (9 items, BELOW 0.99, not comparable)"
        result = {"rows": rows}
    result["int8"] = {"x": {"gate_min_cosine": 0.995, "served": {"min_cosine": 0.95}}}
    return result


def _peer_line(result):
    found = [t for t in targets.pipeline_targets("minilm", result, cores=2)
             if t["target"].startswith("served ahead of the peers users pick")]
    return found[0] if found else None


def test_peer_target_leaves_out_peer_rows_that_failed_their_correctness_check():
    for checks in (True, False):
        line = _peer_line(_peer_result(100.0, checks=checks))
        assert line["met"], line                 # the 150 items/s Infinity int8 row is out
        assert "Infinity torch fp32 at 16 in flight: 80.0 = 1.25x" in line["figures"]
        assert "LitServe 2 workers x 1 thread at 16 in flight: 90.0 = 1.11x" in line["figures"]
        assert "Infinity not comparable (correctness below 0.99, excluded): optimum ONNX int8 " \
               "(min cosine 0.83, 150.0 items/s)" in line["figures"]


def test_peer_target_behind_a_peer_says_each_ones_cpu_per_item():
    line = _peer_line(_peer_result(75.0))
    assert not line["met"]
    # towhee_rt: 0.25 cores / 75 items/s = 3.33 ms; LitServe: 1.7 cores / 90 = 18.89 ms
    assert line["reason"] == ("0.94x Infinity: towhee_rt spends 3.33 ms of CPU per item "
                              "(decode stubs 2.67, tritonserver 0.67), Infinity 21.25 ms; cores "
                              "idle 1.75 here, 0.30 there; 0.83x LitServe: towhee_rt spends "
                              "3.33 ms of CPU per item (decode stubs 2.67, tritonserver 0.67), "
                              "LitServe 18.89 ms; cores idle 1.75 here, 0.30 there")


def test_peer_target_uses_int8_rows_only_when_accurate():
    inaccurate = _peer_line(_peer_result(75.0, int8_rate=200.0))  # served min cosine 0.95
    assert not inaccurate["met"]
    assert "(int8 points below 0.99 left out: 1)" in inaccurate["figures"]
    result = _peer_result(75.0, int8_rate=200.0)
    result["int8"]["x"]["served"]["min_cosine"] = 0.995
    accurate = _peer_line(result)
    assert accurate["met"] and accurate["figures"].startswith(
        targets.SERVED + "int8 (onnx_int8) at 8 in flight: 200.0 items/s")


def test_peer_target_without_peers_or_comparable_peers():
    result = _peer_result(100.0)
    result["rows"] = [r for r in result["rows"] if not r["system"].startswith(("Infinity",
                                                                               "LitServe"))]
    assert _peer_line(result) is None                              # not measured: no line
    result = _peer_result(100.0)
    result["rows"] = [r for r in result["rows"] if "torch fp32" not in r["system"]
                      and not r["system"].startswith("LitServe")]
    line = _peer_line(result)
    assert not line["met"] and line["reason"].startswith("not measured")
    assert "Infinity: no setting passed its correctness check" in line["figures"]
