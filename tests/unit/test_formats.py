"""format_priority and jit: selection, fallback with logged reasons, parity, cache, repository."""
import json
import logging

import numpy as np
import pytest

import towhee_rt as towhee
from towhee_rt.accel import formats, onnx_export, parity
from towhee_rt.triton import config as tc

SENTENCES = ["Triton serves embeddings.", "a photo of a cat", "", "naïve café, 東京",
             "word " * 300]


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TOWHEE_RT_CACHE", str(tmp_path / "cache"))
    # Skips are logged once per process; start each test with none logged yet.
    monkeypatch.setattr(formats, "_logged", set())


def _image_pipe(**pipeline_config):
    builder = towhee.dummy_input()
    if pipeline_config:
        builder = builder.pipeline_config(**pipeline_config)
    return builder.image_decode.cv2_rgb() \
        .image_embedding.timm(model_name="test_resnet", pretrained=False) \
        .as_function()


def _max_rel(a, b):
    return max(float(np.abs(x - y).max() / np.abs(y).max()) for x, y in zip(a, b))


def test_tensorrt_then_onnx_picks_onnx_here_and_logs_why(caplog, good_dir):
    with caplog.at_level(logging.WARNING, logger="towhee_rt"):
        pipe = _image_pipe(format_priority=["tensorrt", "onnx"])
    assert pipe.formats() == {"1:image_embedding.timm": "onnx"}
    choice = pipe.format_choice(1)
    assert choice.skipped and choice.skipped[0][0] == "tensorrt"
    reason = choice.skipped[0][1]
    assert reason.startswith("module not installed") or reason == "no CUDA device" \
        or "device_ids" in reason
    assert f"image_embedding.timm: tensorrt skipped: {reason}" in caplog.text
    assert choice.relative_error <= parity.TOLERANCE["fp32"]
    files = [str(good_dir / n) for n in ("chelsea.jpg", "coffee.jpg", "camera_gray.png")]
    assert _max_rel(pipe(files), _image_pipe()(files)) <= 1e-4


def test_default_and_explicit_torch_formats():
    assert _image_pipe().formats() == {"1:image_embedding.timm": "torch"}
    assert _image_pipe(format_priority=["torch", "onnx"]).formats() == {
        "1:image_embedding.timm": "torch"}


def test_failed_parity_falls_back_to_torch_with_the_reason(monkeypatch, caplog):
    monkeypatch.setitem(parity.TOLERANCE, "fp32", -1.0)  # nothing can pass: real check fails
    with caplog.at_level(logging.WARNING, logger="towhee_rt"):
        pipe = _image_pipe(format_priority=["onnx"])
    assert pipe.formats() == {"1:image_embedding.timm": "torch"}
    assert "onnx skipped: parity check failed: relative error" in caplog.text


def test_onnx_export_is_cached_and_reused(monkeypatch):
    calls = []
    real_export = onnx_export._export
    monkeypatch.setattr(onnx_export, "_export",
                        lambda op, module, p: calls.append(p) or real_export(op, module, p))
    first = _image_pipe(format_priority=["onnx"]).format_choice(1).model_file
    second = _image_pipe(format_priority=["onnx"]).format_choice(1).model_file
    assert first == second and len(calls) == 1
    other_seed = towhee.dummy_input().pipeline_config(format_priority=["onnx"]) \
        .image_embedding.timm(model_name="test_resnet", pretrained=False, seed=1).as_function()
    assert other_seed.format_choice(0).model_file != first and len(calls) == 2


def test_onnx_repository_holds_the_model_file_and_no_machine_facts(tmp_path):
    pipe = (towhee.dummy_input().pipeline_config(format_priority=["onnx"])
            .image_embedding.timm(model_name="test_resnet", pretrained=False,
                                  op_config={"instance_count": 2})
            .as_function())
    repo = towhee.build_model_repo(pipe, tmp_path / "repo")
    model_dir = tmp_path / "repo" / repo.models[0].model_name
    config = tc.parse_pbtxt((model_dir / "config.pbtxt").read_text())
    params = json.loads(tc.read_parameters(config)["towhee_params"])
    assert params["format"] == "onnx" and params["model_file"] == "model.onnx"
    assert (model_dir / "1" / "model.onnx").is_file()
    # Threads are decided on the serving machine, when the model loads (model.py).
    assert "num_threads" not in params
    assert tc.read_parameters(config)["towhee_format"].startswith("onnx (parity rel. err")
    assert "| onnx (parity" in (tmp_path / "repo" / "README.md").read_text()


def test_minilm_in_onnx_still_matches_sentence_transformers():
    from sentence_transformers import SentenceTransformer

    from towhee_rt.backends.text_embedding import SentenceTransformerEmbedding

    pipe = (towhee.dummy_input().pipeline_config(format_priority=["onnx"])
            .text_embedding.sentence_transformers().as_function())
    assert pipe.formats() == {"0:text_embedding.sentence_transformers": "onnx"}
    ours = np.stack(pipe(SENTENCES))
    path = SentenceTransformerEmbedding().model_path()
    reference = SentenceTransformer(path, device="cpu").encode(SENTENCES)
    cosine = (ours * reference).sum(1) / (np.linalg.norm(ours, axis=1) *
                                          np.linalg.norm(reference, axis=1))
    assert cosine.min() >= 0.9999


@pytest.mark.parametrize("builder", [
    lambda b: b.image_text_embedding.clip_image(model_name="ViT-S-32", pretrained=False),
    lambda b: b.image_text_embedding.clip_text(model_name="ViT-S-32", pretrained=False),
], ids=["clip_image", "clip_text"])
def test_clip_operators_export_to_onnx_within_parity(builder):
    pipe = builder(towhee.dummy_input().pipeline_config(format_priority=["onnx"])).as_function()
    (choice,) = [pipe.format_choice(0)]
    assert choice.format == "onnx" and choice.relative_error <= parity.TOLERANCE["fp32"]
    # One self-contained file (the repository copies it alone): no external-data files.
    import onnx
    from pathlib import Path

    model = onnx.load(choice.model_file, load_external_data=False)
    assert not any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert [p.name for p in Path(choice.model_file).parent.iterdir()] == [
        Path(choice.model_file).name]


def test_jit_compiles_with_torch_compile_and_checks_parity(good_dir):
    pipe = (towhee.dummy_input().image_decode.cv2_rgb()
            .image_embedding.timm(model_name="test_resnet", pretrained=False,
                                  op_config={"jit": "towhee"})
            .as_function())
    choice = pipe.format_choice(1)
    if choice.format != "torch_compile":  # e.g. no C++ compiler: must say why
        assert choice.skipped and "torch.compile" in choice.skipped[-1][0]
        pytest.skip(f"torch.compile unavailable here: {choice.skipped[-1][1]}")
    assert choice.relative_error <= parity.TOLERANCE["fp32"]
    files = [str(good_dir / "chelsea.jpg")]
    assert _max_rel(pipe(files), _image_pipe()(files)) <= 1e-4


@pytest.mark.gpu
def test_tensorrt_engine_on_gpu_matches_torch(good_dir):
    torch = pytest.importorskip("torch")
    pytest.importorskip("tensorrt")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    pipe = (towhee.dummy_input().pipeline_config(format_priority=["tensorrt"])
            .image_decode.cv2_rgb()
            .image_embedding.timm(model_name="test_resnet", pretrained=False,
                                  op_config={"device_ids": [0]})
            .as_function())
    assert pipe.formats() == {"1:image_embedding.timm": "tensorrt"}
    files = [str(good_dir / "chelsea.jpg")]
    assert _max_rel(pipe(files), _image_pipe()(files)) <= 1e-4
