"""The pipeline fingerprint: what counts (operators, weights, preprocessing, format), what does
not (runtime knobs, op_config, paths, where weights came from), the same value locally, in the
repository and through the gateway's backend."""
from __future__ import annotations

import json

import numpy as np
import pytest

import towhee_rt as towhee
from towhee_rt.backends.wire import PARAM_FINGERPRINT
from towhee_rt.client.inputs import ServedInput
from towhee_rt.fingerprint import FINGERPRINT_LENGTH, fingerprint, step_identity
from towhee_rt.triton.config import read_parameters, read_repository

LOCK = {"operator": "image_embedding.timm", "model_name": "resnet50", "source": "hf-hub",
        "repo_id": "timm/resnet50.a1_in1k", "revision": "abc", "format": "torch",
        "file": "weights.safetensors", "sha256": "f" * 64, "libraries": {"torch": "2.14.1"},
        "preprocess": {"input_size": [3, 224, 224], "mean": [0.485, 0.456, 0.406]}}


def _embed(**lock_changes):
    params = {"model_name": "resnet50", "format": "torch", "checkpoint_path":
              "weights.safetensors", "pretrained": False, "lock": {**LOCK, **lock_changes}}
    return step_identity("image_embedding.timm", params, params["lock"]["format"])


def _fp(*identities):
    return fingerprint(identities)


def test_what_counts_weights_preprocessing_format_and_vector_params():
    decode = step_identity("image_decode.cv2_rgb", {"resize_crop": [256, 224, 224]})
    base = _fp(decode, _embed())
    assert len(base) == FINGERPRINT_LENGTH and int(base, 16) >= 0
    assert _fp(decode, _embed()) == base  # stable
    assert _fp(decode, _embed(sha256="e" * 64)) != base                     # other weights
    assert _fp(decode, _embed(preprocess={"input_size": [3, 256, 256]})) != base
    assert _fp(decode, _embed(model_name="resnet18")) != base
    onnx = step_identity("image_embedding.timm", {"lock": LOCK}, "onnx_int8")
    assert _fp(decode, onnx) != base                                        # format counts
    other_crop = step_identity("image_decode.cv2_rgb", {"resize_crop": [288, 256, 256]})
    assert _fp(other_crop, _embed()) != base                                # decode params
    assert _fp(_embed(), decode) != _fp(decode, _embed())                   # order


def test_what_does_not_count_provenance_runtime_knobs_and_paths():
    decode = step_identity("image_decode.cv2_rgb", {"resize_crop": [256, 224, 224]})
    base = _fp(decode, _embed())
    # where the same weights came from, library versions, the shipped file's name
    assert _fp(decode, _embed(source="checkpoint", checkpoint="/home/me/w.safetensors",
                              revision="def", libraries={"torch": "9"})) == base
    knobs = step_identity("image_decode.cv2_rgb", {
        "resize_crop": [256, 224, 224], "max_bytes": 10, "allow_paths": ["/data"],
        "in_process": True, "timeout": 3, "max_pixels": 100, "artifact_dir": "/x"})
    assert _fp(knobs, _embed()) == base
    # an absolute path counts by its file name only (a local model dir, moved)
    one = step_identity("text_embedding.transformers", {"model_name": "/a/b/minilm"})
    two = step_identity("text_embedding.transformers", {"model_name": "/c/minilm/"})
    assert _fp(one) == _fp(two) != _fp(step_identity("text_embedding.transformers",
                                                     {"model_name": "/c/other"}))


def _pipe(seed=0, crop=None, params=None, **op):
    decode = {"resize_crop": crop} if crop else {}
    return (towhee.dummy_input()
            .image_decode.cv2_rgb(**decode)
            .image_embedding.timm(model_name="test_resnet", pretrained=False, seed=seed,
                                  op_config=op or None, **(params or {}))
            .as_function())


def test_rebuilding_keeps_it_other_weights_or_preprocessing_change_it():
    first = _pipe()
    value = first.fingerprint
    assert value == first.build().fingerprint and len(value) == FINGERPRINT_LENGTH
    assert _pipe().fingerprint == value                               # the same pipeline again
    assert _pipe(instance_count=3, params={"num_threads": 1}).fingerprint == value  # runtime knobs
    assert _pipe(seed=1).fingerprint != value                         # other (random) weights
    assert _pipe(crop=[160, 128, 128]).fingerprint != value           # other preprocessing


def test_the_repository_carries_it(tmp_path):
    pipe = _pipe()
    repo = towhee.build_model_repo(pipe, tmp_path / "a")
    assert repo.fingerprint == pipe.fingerprint
    configs = read_repository(repo.path)
    assert read_parameters(configs["pipeline"])[PARAM_FINGERPRINT] == pipe.fingerprint
    assert f"fingerprint is `{pipe.fingerprint}`" in (repo.path / "README.md").read_text()
    # the operator models' params hold what it was computed from
    lock = json.loads(read_parameters(configs["pipeline_1_image_embedding_timm"])[
        "towhee_params"])["lock"]
    assert lock["sha256"] == pipe.build().steps[1].weights_sha256
    again = towhee.build_model_repo(_pipe(), tmp_path / "b")  # another build, another place
    assert again.fingerprint == pipe.fingerprint


class _FakeClient:
    def __init__(self, fingerprint):
        self.fingerprint = fingerprint
        self.served = ServedInput("text")
        self.max_batch_size = 8
        self.concurrency = 4


@pytest.mark.parametrize("fingerprint", ["0123456789abcdef", None])
def test_the_gateway_backend_reads_it_from_its_client(fingerprint):
    pytest.importorskip("starlette")
    from starlette.testclient import TestClient

    from towhee_rt.gateway.app import FINGERPRINT_HEADER, create_app
    from towhee_rt.gateway.backend import PipelineBackend

    backend = PipelineBackend("unused:1", "pipeline", client=_FakeClient(fingerprint))
    assert backend.fingerprint == fingerprint
    backend.embed = lambda items: [np.full(2, 0.5, dtype=np.float32) for _ in items]
    with TestClient(create_app(backend)) as http:
        response = http.post("/v1/embeddings", json={"model": "pipeline", "input": ["hi"]})
        card = http.get("/v1/models/pipeline").json()
    assert response.status_code == 200
    assert response.headers.get(FINGERPRINT_HEADER) == fingerprint
    assert card.get("fingerprint") == fingerprint
