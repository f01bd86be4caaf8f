"""The build step: explicit, once, frozen; params checked at build and never mutated."""
import dataclasses

import pytest

import towhee_rt as towhee
from towhee_rt import pipeline as pipeline_module
from towhee_rt.registry import BUILTIN_OPERATORS, operator_class


def _onnx_pipe():
    return (towhee.dummy_input().pipeline_config(format_priority=["onnx"])
            .image_decode.cv2_rgb(min_side=64)
            .image_embedding.timm(model_name="test_resnet", pretrained=False, seed=3)
            .as_function())


def test_build_is_explicit_once_and_frozen():
    pipe = _onnx_pipe()
    user_params = [dict(op.params) for op in pipe.operators]
    built = pipe.build()
    assert pipe.build() is built
    decode, embed = built.steps
    assert (decode.format, decode.model_files) == (None, ())
    assert decode.params == {"min_side": 64}
    assert embed.format.format == "onnx" and embed.format.relative_error is not None
    lock = embed.params["lock"]
    assert embed.params == {"model_name": "test_resnet", "seed": 3, "pretrained": False,
                            "format": "onnx", "model_file": "model.onnx", "lock": lock}
    assert (lock["source"], lock["seed"], lock["file"]) == ("random", 3, "model.onnx")
    assert [f.name for f in embed.model_files] == ["model.onnx"]
    assert [op.params for op in pipe.operators] == user_params  # nothing mutated
    assert embed.local.operator.runner.format == "onnx"  # the runner the parity check verified
    with pytest.raises(dataclasses.FrozenInstanceError):
        embed.params = {}


def test_torch_format_ships_its_weights_in_place_of_the_users_checkpoint(tmp_path):
    from safetensors.torch import save_file

    op = operator_class("image_embedding.timm")(model_name="test_resnet", pretrained=False)
    save_file(op.torch_module().state_dict(), str(tmp_path / "w.safetensors"))
    pipe = towhee.dummy_input().image_embedding.timm(
        model_name="test_resnet", pretrained=False,
        checkpoint_path=str(tmp_path / "w.safetensors")).as_function()
    (step,) = pipe.build().steps
    assert step.params["checkpoint_path"] == "weights.safetensors"
    assert [f.name for f in step.model_files] == ["weights.safetensors"]


def test_data_collection_builds_once(monkeypatch, good_dir):
    calls = []
    real = pipeline_module.build_pipeline
    monkeypatch.setattr(pipeline_module, "build_pipeline",
                        lambda *a: calls.append(1) or real(*a))
    collection = towhee.dc([str(good_dir / "chelsea.jpg")]).image_decode.cv2_rgb()
    first, second = collection.to_list(), collection.to_list()
    assert first[0].shape == second[0].shape == (300, 451, 3) and len(calls) == 1


@pytest.mark.parametrize("make, fragment", [
    (lambda b: b.image_decode.cv2_rgb(max_pixel=10),
     "image_decode.cv2_rgb: unknown param(s) 'max_pixel'; valid params are: max_pixels (int, "
     "default 16777216), timeout (number, default 10.0), max_bytes (int, default 33554432), "
     "allow_paths (list or None, default None), allow_urls (list or None, default None), "
     "allow_private_networks (bool, default False), min_side (int or None, default None)"),
    (lambda b: b.image_decode.cv2_rgb(timeout="10"), "param 'timeout' must be number"),
    (lambda b: b.image_embedding.timm(), "the param 'model_name' is required"),
    (lambda b: b.image_embedding.timm(model_name="test_resnet", pretrained=False, format="onnx"),
     "param(s) set by towhee_rt itself 'format'"),
    (lambda b: b.image_text_embedding.clip_image(normalize="yes"),
     "param 'normalize' must be bool"),
    (lambda b: b.text_embedding.sentence_transformers(model_name="no/such/dir").as_function(),
     "is neither a local directory nor a sentence-transformers model name"),
    (lambda b: b.image_text_embedding.clip_image(model_name="ViT-S-32").as_function(),
     "open_clip has no pretrained weights for 'ViT-S-32'; pass pretrained=False"),
    (lambda b: b.image_text_embedding.clip_image(pretrained="no_such_tag").as_function(),
     "'no_such_tag' is not an open_clip pretrained tag of 'ViT-B-32'; choose one of openai, "),
    (lambda b: b.image_embedding.timm(model_name="test_resnet", pretrained=False,
                                      checkpoint_path="/no/such.safetensors")
     .as_function().build(),
     "checkpoint_path '/no/such.safetensors' is not a file"),
])
def test_bad_params_fail_at_build_with_a_config_error(make, fragment):
    with pytest.raises(towhee.ConfigError) as info:
        make(towhee.dummy_input())
    assert fragment in str(info.value)
    assert isinstance(info.value, towhee.TowheeRTError)


def test_every_registered_class_declares_its_name():
    for name in BUILTIN_OPERATORS:
        assert operator_class(name).name == name
