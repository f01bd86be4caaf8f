"""bench/cpu_budget.py: CPU ms per item by process group; bench/baselines.py records the
ceiling's own CPU per item (issue 23)."""
from __future__ import annotations

import json
import os
import types

import numpy as np
import pytest

from bench import cpu_budget


def test_labels_fall_into_groups():
    assert [cpu_budget.group_of(label) for label in (
        "stub pipeline_1_image_embedding_timm_0_0",
        "stub pipeline_0_text_embedding_sentence_transformers_0_1",
        "stub pipeline_0_image_decode_cv2_rgb_0_1", "bench process (client)", "tritonserver",
        "pytriton user process", "python", "pid 42")] == [
        "model", "model", "decode", "client", "tritonserver", "other", "other", "other"]


def test_budget_per_item_by_group_and_what_it_allows():
    row = {"items_per_s": 50.0, "foreign_cores": 0.1, "cpu_split": {
        "stub pipeline_1_image_embedding_timm_0_0": 0.7, "python": 0.05,
        "stub pipeline_1_image_embedding_timm_0_1": 0.6, "tritonserver": 0.1,
        "stub pipeline_0_image_decode_cv2_rgb_0_0": 0.15, "bench process (client)": 0.1}}
    cost = cpu_budget.budget(row, cores=2)
    # cores / 50 items/s: model 1.3 -> 26 ms, decode 3, client 2, tritonserver 2, other 1
    assert list(cost.ms) == ["model", "decode", "client", "tritonserver", "other"]
    assert [round(v, 6) for v in cost.ms.values()] == [26.0, 3.0, 2.0, 2.0, 1.0]
    assert cost.total_ms == pytest.approx(34.0)
    assert cost.cpu_bound_items_per_s == pytest.approx(2000.0 / 34.0)
    assert cost.idle_cores == pytest.approx(2 - 1.7 - 0.1)


def test_no_budget_without_a_split_or_a_rate():
    assert cpu_budget.budget({"items_per_s": 10.0, "cpu_split": {}}, 2) is None
    assert cpu_budget.budget({"items_per_s": 0.0, "cpu_split": {"tritonserver": 1.0}}, 2) is None


def test_machine_cores_and_the_ceiling_cpu():
    assert cpu_budget.machine_cores({"machine": {"cores": 2}}) == 2
    assert cpu_budget.machine_cores({}) == (os.cpu_count() or 1)
    measured = {"items_per_s": 100.0, "settings": {"cpu_ms_per_item": 12.5,
                                                   "intra_op_threads": 2}}
    assert cpu_budget.ceiling_ms_per_item(measured) == (12.5, True)
    older = {"items_per_s": 100.0, "settings": {"intra_op_threads": 2}}
    assert cpu_budget.ceiling_ms_per_item(older) == (20.0, False)
    assert cpu_budget.ceiling_ms_per_item({"items_per_s": 100.0}) == (None, False)


def test_the_ceiling_records_its_cpu_per_item(tmp_path):
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    from bench.baselines import onnx_ceiling

    weight = helper.make_tensor("w", TensorProto.FLOAT, [64, 64],
                                np.ones(64 * 64, np.float32).tolist())
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 64])],
                              [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    path = str(tmp_path / "m.onnx")
    onnx.save(model, path)
    op = types.SimpleNamespace(
        inputs=[types.SimpleNamespace(name="x")], ensure_setup=lambda: None,
        preprocess=lambda feed: {"x": np.ones((len(feed["x"]), 64), np.float32)})
    pipe = types.SimpleNamespace(operators=[op])
    best, tried = onnx_ceiling("tiny", pipe, path, list(range(8)), batch_sizes=(1, 4),
                               threads=1, min_seconds=0.05)
    for row in tried:
        settings = json.loads(json.dumps(row.to_dict()))["settings"]
        assert settings["cpu_ms_per_item"] > 0
        # one thread: no more CPU than wall time per item (some slack for timer resolution)
        assert settings["cpu_ms_per_item"] <= row.seconds * 1000.0 / row.items * 1.5 + 0.05
