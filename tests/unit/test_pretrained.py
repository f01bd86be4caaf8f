"""Pretrained weights by default, loaded by each library itself, and pinned in the repository.

The tests write a Hugging Face hub cache with tiny models (tests/hub_cache.py) and run the
pipelines in a subprocess with ``HF_HUB_CACHE`` pointing at it and ``HF_HUB_OFFLINE=1``
(tests/pretrained_cases.py), so the real loading code of timm, open_clip, sentence-transformers
and transformers runs, against a cache instead of the hub. The served side is in
tests/integration/test_pretrained_served.py.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from towhee_rt.triton import config as tc

from ..hub_cache import BERT_REPO, CLIP_REPO, ST_REPO, TIMM_REPO, run_offline
from ..pretrained_cases import CASES

#: Shipped alongside the weights so that a served copy needs no hub (config, tokenizer files).
SHIPPED_DIRS = {"timm": None, "timm_hub_onnx": "timm_config", "clip_image": "open_clip",
                "clip_text_onnx": "open_clip", "st": "hf_model", "bert_onnx": "hf_model"}


def _model_dir(repo: Path, pipeline: str) -> Path:
    (model_dir,) = [d for d in repo.iterdir() if d.name.startswith(pipeline + "_")
                    and d.name[len(pipeline) + 1].isdigit() and (d / "1").is_dir()
                    and "image_decode" not in d.name]
    return model_dir


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_default_loads_exactly_the_cached_weights(pretrained_build, case):
    result = pretrained_build["cases"][case]
    # The pipeline's vectors are the library's own model on the library's own preprocessing.
    assert result["vs_library"] <= 1e-5, result
    lock = result["lock"]
    repo_id = CASES[case][1]
    assert (lock["source"], lock["repo_id"]) == ("hf-hub", repo_id)
    assert lock["revision"] == pretrained_build["commits"][repo_id]  # the snapshot's commit
    assert lock["format"] == ("onnx" if case.endswith("_onnx") else "torch")


def test_pretrained_false_is_random_not_the_cached_weights(pretrained_build):
    for case, error in pretrained_build["random_vs_pretrained"].items():
        assert error > 0.1, (case, error)


def test_preprocessing_follows_the_models_own_config(pretrained_build):
    cases = pretrained_build["cases"]
    timm_pre = cases["timm"]["lock"]["preprocess"]
    assert (timm_pre["input_size"], timm_pre["crop_pct"], timm_pre["interpolation"]) == (
        [3, 160, 160], 0.95, "bilinear")  # test_resnet.r160_in1k's pretrained cfg
    assert cases["timm_hub_onnx"]["lock"]["preprocess"] == timm_pre
    clip_pre = cases["clip_image"]["lock"]["preprocess"]["image"]
    assert (clip_pre["size"], clip_pre["std"], clip_pre["resize_mode"]) == (
        [64, 64], [0.25, 0.25, 0.25], "squash")  # the hub repo's preprocess_cfg
    st = cases["st"]["lock"]
    assert (st["preprocess"]["max_length"], st["pooling"], st["normalize"]) == (24, "mean", True)
    bert = cases["bert_onnx"]["lock"]
    assert (bert["preprocess"]["max_length"], bert["pooling"], bert["normalize"]) == (
        64, "mean", False)


@pytest.mark.parametrize("case", sorted(CASES))
def test_the_repository_carries_weights_and_lock(pretrained_build, case):
    repo = Path(pretrained_build["repo"])
    model_dir = _model_dir(repo, case)
    config = tc.parse_pbtxt((model_dir / "config.pbtxt").read_text())
    parameters = tc.read_parameters(config)
    params = json.loads(parameters[tc.PARAM_PARAMS])
    lock = params["lock"]  # the one copy: the served operator reads its preprocessing from it
    assert lock == pretrained_build["cases"][case]["lock"]  # == pipe.model_card()
    assert params.get("pretrained", False) is False
    shipped = model_dir / "1" / lock["file"]
    assert _sha256(shipped) == lock["sha256"]
    if lock["format"] == "torch":
        assert params["checkpoint_path"] == lock["file"] == "weights.safetensors"
    else:
        assert params["model_file"] == lock["file"] == "model.onnx"
    if SHIPPED_DIRS[case]:
        assert params["model_dir"] == SHIPPED_DIRS[case]
        files = {p.name for p in (model_dir / "1" / SHIPPED_DIRS[case]).iterdir()}
        assert files and not files & {"model.safetensors", "pytorch_model.bin",
                                      "open_clip_model.safetensors"}  # weights ship once


def test_the_repository_readme_shows_the_lock(pretrained_build):
    # The README describes the pipeline written last (each build_model_repo rewrites it).
    case = pretrained_build["readme_case"]
    lock = pretrained_build["cases"][case]["lock"]
    readme = (Path(pretrained_build["repo"]) / "README.md").read_text()
    row = next(line for line in readme.splitlines() if f"`{lock['sha256']}`" in line)
    assert f"hub `{lock['repo_id']}` @ `{lock['revision']}`" in row
    assert f"`{lock['file']}`" in row and '"max_length": 64' in row


def test_two_builds_give_byte_identical_weights(pretrained_build):
    repo, again = Path(pretrained_build["repo"]), Path(pretrained_build["again"])
    torch_cases = [c for c in CASES if not c.endswith("_onnx")]
    for case in torch_cases:
        first = _model_dir(repo, case) / "1" / "weights.safetensors"
        second = _model_dir(again, case) / "1" / "weights.safetensors"
        assert first.read_bytes() == second.read_bytes(), case


def test_unreachable_weights_fail_the_build_and_never_become_random(tmp_path):
    empty = tmp_path / "hub"
    empty.mkdir()
    result = run_offline(["tests.pretrained_cases", "errors"], empty, tmp_path / "cache")
    for case, repo_id in [(c, r) for c, (_, r) in CASES.items()] + [
            ("clip_default", "timm/vit_base_patch32_clip_224.openai")]:
        outcome = result[case]
        assert outcome["error"] and outcome["type"] == "ConfigError", (case, outcome)
        message = outcome["error"]
        assert f"Hugging Face repo {repo_id!r}" in message, message
        assert str(empty) in message and "HF_HUB_OFFLINE is set" in message, message
        assert f"`hf download {repo_id}`" in message, message
    for case in ("timm", "clip_default"):  # registry models: all three ways out
        message = result[case]["error"]
        assert "checkpoint_path=" in message and "pretrained=False" in message, message
        assert "No random weights are used" in message
    assert "pretrained tag 'r160_in1k'" in result["timm"]["error"]
    assert "'clip_vit_base_patch32' (open_clip ViT-B-32, pretrained tag 'openai')" in \
        result["clip_default"]["error"]
    for case in ("st", "bert_onnx"):
        assert "model_name='<local directory>'" in result[case]["error"]
    assert result["timm_random_offline"] == [96]  # pretrained=False needs no hub


def test_the_test_cache_has_the_hubs_layout(hub_cache):
    path, commits = hub_cache
    assert set(commits) == {TIMM_REPO, CLIP_REPO, ST_REPO, BERT_REPO}
    for repo_id, commit in commits.items():
        folder = path / ("models--" + repo_id.replace("/", "--"))
        assert (folder / "refs" / "main").read_text() == commit
        snapshot = folder / "snapshots" / commit
        files = [p for p in snapshot.rglob("*") if p.is_file()]
        assert files and all(p.is_symlink() and p.resolve().parent.name == "blobs"
                             for p in files)
