"""onnx_int8: calibration through the pipeline, the accuracy gate, fallback and recording."""
import json
import logging

import numpy as np
import pytest

import towhee_rt as towhee
from towhee_rt.accel import formats
from towhee_rt.triton import config as tc

from ..conftest import CALIBRATION_SENTENCES as SENTENCES, GOOD_SHAPES

#: Short sentences are where per-tensor dynamic quantization fails MiniLM (cosine 0.969).
HELD_OUT = ["Triton Inference Server serves models over gRPC and HTTP.",
            "Quantization trades a little accuracy for a lot of speed on CPUs.",
            "The weather today is sunny with a light breeze.",
            "Stock markets fell sharply after the announcement.", "Yes", "hi", "Sure thing."]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOWHEE_RT_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(formats, "_logged", set())  # skips are logged once per process


def _image_pipe(good_dir, **config):
    calibration = [str(good_dir / n) for n in GOOD_SHAPES]
    return (towhee.dummy_input()
            .pipeline_config(format_priority=["onnx_int8", "onnx"],
                             calibration_data=calibration, **config)
            .image_decode.cv2_rgb().image_embedding.timm(model_name="test_resnet", pretrained=False)
            .as_function())


def test_image_int8_is_calibrated_gated_and_recorded(good_dir, tmp_path):
    pipe = _image_pipe(good_dir)
    choice = pipe.format_choice(1)
    assert choice.format == "onnx_int8" and choice.min_cosine >= 0.99
    files = [str(good_dir / "chelsea.jpg"), str(good_dir / "rocket.jpg")]
    fp32 = (towhee.dummy_input().image_decode.cv2_rgb()
            .image_embedding.timm(model_name="test_resnet", pretrained=False).as_function())
    for a, b in zip(pipe(files), fp32(files)):
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) >= 0.99
    repo = towhee.build_model_repo(pipe, tmp_path / "repo")
    model_dir = repo.path / repo.models[1].model_name
    config = tc.parse_pbtxt((model_dir / "config.pbtxt").read_text())
    params = json.loads(tc.read_parameters(config)["towhee_params"])
    assert params["format"] == "onnx_int8" and (model_dir / "1" / params["model_file"]).is_file()
    assert "min cosine to fp32 0.99" in tc.read_parameters(config)["towhee_format"]
    assert "accuracy gate" in (repo.path / "README.md").read_text()


def test_failed_gate_falls_back_to_the_next_format_with_the_reason(good_dir, caplog):
    with caplog.at_level(logging.WARNING, logger="towhee_rt"):
        pipe = _image_pipe(good_dir, int8_min_cosine=1.0)
        pipe.build()
    assert pipe.formats() == {"1:image_embedding.timm": "onnx"}
    assert "onnx_int8 skipped: accuracy gate failed: no int8 recipe keeps min cosine to fp32 " \
        ">= 1.0 (best: static-qdq-" in caplog.text   # the best recipe's figure leads
    assert "static-qdq-per-channel: min cosine 0.9" in caplog.text
    assert "static-qdq-symmetric: min cosine 0.9" in caplog.text
    # A CNN without a classifier has no MatMul/Gemm: that recipe says so instead of passing an
    # unchanged fp32 model off as int8.
    assert "dynamic-matmul-gemm-per-channel: no MatMul/Gemm with constant weights" in caplog.text


def test_recipe_order_by_model_inputs():
    from towhee_rt.accel.quantize import recipes
    from towhee_rt.backends.image_embedding import TimmImageEmbedding
    from towhee_rt.backends.text_embedding import SentenceTransformerEmbedding

    blockwise = ["blockwise-int8-128", "blockwise-int8-64", "blockwise-int8-32"]
    image = TimmImageEmbedding(model_name="resnet50", pretrained=False)
    assert [r.name for r in recipes(image)] == [
        "static-qdq-per-channel", "static-qdq-per-channel-fallback", "static-qdq-symmetric",
        "dynamic-matmul-gemm-per-channel"] + blockwise
    text = SentenceTransformerEmbedding()
    assert [r.name for r in recipes(text)] == ["dynamic-matmul-per-channel"] + blockwise


def test_without_calibration_data_the_user_is_warned(caplog):
    with caplog.at_level(logging.WARNING, logger="towhee_rt"):
        (towhee.dummy_input().pipeline_config(format_priority=["onnx_int8", "onnx"])
         .image_embedding.timm(model_name="test_resnet", pretrained=False).as_function().build())
    assert "no calibration_data given; calibrating on 12 random inputs" in caplog.text


def test_bad_calibration_samples_are_skipped_with_a_warning(good_dir, bad_dir, caplog):
    calibration = [str(good_dir / n) for n in GOOD_SHAPES] + [str(bad_dir / "empty.jpg")]
    with caplog.at_level(logging.WARNING, logger="towhee_rt"):
        pipe = (towhee.dummy_input()
                .pipeline_config(format_priority=["onnx_int8"], calibration_data=calibration)
                .image_decode.cv2_rgb()
                .image_embedding.timm(model_name="test_resnet", pretrained=False)
                .as_function())
    assert pipe.format_choice(1).format == "onnx_int8"
    assert "calibration sample 12 skipped" in caplog.text and "empty.jpg" in caplog.text


def test_minilm_int8_keeps_cosine_to_sentence_transformers_on_held_out_sentences(
        tmp_path, monkeypatch):
    from sentence_transformers import SentenceTransformer

    from towhee_rt.backends.text_embedding import bundled_minilm_dir

    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # regression: quantizing once left 90 MB of weights in the cwd
    pipe = (towhee.dummy_input()
            .pipeline_config(format_priority=["onnx_int8"], calibration_data=SENTENCES)
            .text_embedding.sentence_transformers().as_function())
    choice = pipe.format_choice(0)
    assert choice.format == "onnx_int8" and choice.min_cosine >= 0.99
    assert "blocks of" in choice.summary()  # the dynamic recipe fails on the short sentences
    assert list(cwd.iterdir()) == []
    ours = np.stack(pipe(HELD_OUT))
    reference = SentenceTransformer(bundled_minilm_dir(), device="cpu").encode(HELD_OUT)
    cosine = (ours * reference).sum(1) / (np.linalg.norm(ours, axis=1) *
                                          np.linalg.norm(reference, axis=1))
    assert cosine.min() >= 0.99


def test_every_conv_runs_in_int8(good_dir, tmp_path):
    """Regression: without pre-processing, exporter ``Identity`` nodes kept most QDQ Convs in
    fp32 (resnet50: 7 of 53 fused), and int8 ran slower than fp32."""
    import onnx
    import onnxruntime as ort

    path = _image_pipe(good_dir).format_choice(1).model_file
    options = ort.SessionOptions()
    options.optimized_model_filepath = str(tmp_path / "optimized.onnx")
    ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    ops = [n.op_type for n in onnx.load(str(tmp_path / "optimized.onnx")).graph.node]
    assert ops.count("QLinearConv") > 0 and ops.count("Conv") == 0, sorted(set(ops))


def test_text_recipes_are_tried_in_order_and_all_reasons_reported(caplog):
    with caplog.at_level(logging.WARNING, logger="towhee_rt"):
        pipe = (towhee.dummy_input()
                .pipeline_config(format_priority=["onnx_int8", "onnx"], calibration_data=SENTENCES,
                                 int8_min_cosine=0.99999)
                .text_embedding.sentence_transformers().as_function())
    assert pipe.formats() == {"0:text_embedding.sentence_transformers": "onnx"}
    for recipe in ("dynamic-matmul-per-channel", "blockwise-int8-128", "blockwise-int8-64",
                   "blockwise-int8-32"):
        assert f"{recipe}: min cosine 0." in caplog.text


def test_the_nbits_quantizer_import_leaves_root_logging_alone(monkeypatch):
    import sys

    from towhee_rt.accel import quantize

    monkeypatch.delitem(sys.modules, "onnxruntime.quantization.matmul_nbits_quantizer",
                        raising=False)  # import it afresh
    root = logging.getLogger()
    before = (list(root.handlers), root.level)
    quantize._import_nbits_quantizer()
    assert (list(root.handlers), root.level) == before


def test_clip_image_int8_passes_the_gate_with_some_recipe(good_dir):
    """A vision transformer: static QDQ loses ViT-B/32 (0.979); dynamic MatMul/Gemm keeps it."""
    calibration = [str(good_dir / n) for n in GOOD_SHAPES]
    files = [str(good_dir / "coffee.jpg"), str(good_dir / "astronaut.jpg")]

    def pipe(config):
        return (towhee.dummy_input().pipeline_config(**config).image_decode.cv2_rgb()
                .image_text_embedding.clip_image(model_name="ViT-S-32", pretrained=False)
                .as_function())

    int8 = pipe({"format_priority": ["onnx_int8"], "calibration_data": calibration})
    assert int8.format_choice(1).format == "onnx_int8", int8.format_choice(1).summary()
    for a, b in zip(int8(files), pipe({})(files)):
        assert float(a @ b / np.linalg.norm(a) / np.linalg.norm(b)) >= 0.99
