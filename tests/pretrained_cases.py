"""What the pretrained-weights tests run in an offline subprocess (see tests/hub_cache.py).

    python -m tests.pretrained_cases build OUT   pipelines on the cached tiny models, the
                                                 libraries' own results, two repositories
    python -m tests.pretrained_cases errors [CASE...]  the same pipelines on an empty cache (or, with
                                                 an unreachable HF_ENDPOINT, on any cache)

Each prints one ``RESULT=<json>`` line. ``HF_HUB_CACHE`` and ``HF_HUB_OFFLINE=1`` are set by the
caller before Python starts (huggingface_hub reads them when it is imported).
"""
from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import numpy as np

from tests.hub_cache import BERT_REPO, CLIP_REPO, ST_REPO, TIMM_REPO

SHARED = Path(os.environ.get("TOWHEE_RT_SHARED",
                            Path(__file__).resolve().parents[2] / "shared"))
IMAGES = SHARED / "testdata" / "images" / "good"
IMAGE_FILES = [str(IMAGES / "chelsea.jpg"), str(IMAGES / "coffee.jpg")]
TEXTS = ["a photo of a cat", "Triton serves embeddings to the people", ""]
ONE = {"instance_count": 1}
#: Pipeline name -> (input kind, hub repo of its weights). The ``*_onnx`` ones run as ONNX.
CASES = {
    "timm": ("image", TIMM_REPO),
    "timm_hub_onnx": ("image", TIMM_REPO),
    "clip_image": ("image", CLIP_REPO),
    "clip_text_onnx": ("text", CLIP_REPO),
    "st": ("text", ST_REPO),
    "bert_onnx": ("text", BERT_REPO),
}


def pipelines(**extra):
    """The pipelines under test, pretrained weights by default (``extra`` adds model params)."""
    import towhee_rt as towhee

    def image(onnx=False):
        builder = towhee.dummy_input()
        if onnx:
            builder = builder.pipeline_config(format_priority=["onnx"])
        return builder.image_decode.cv2_rgb()

    def text(onnx=False):
        builder = towhee.dummy_input()
        return builder.pipeline_config(format_priority=["onnx"]) if onnx else builder

    return {
        "timm": image().image_embedding.timm(model_name="test_resnet", op_config=ONE, **extra)
        .as_function(),
        "timm_hub_onnx": image(True).image_embedding.timm(
            model_name="hf-hub:" + TIMM_REPO, op_config=ONE, **extra).as_function(),
        "clip_image": image().image_text_embedding.clip_image(
            model_name="hf-hub:" + CLIP_REPO, op_config=ONE, **extra).as_function(),
        "clip_text_onnx": text(True).image_text_embedding.clip_text(
            model_name="hf-hub:" + CLIP_REPO, op_config=ONE, **extra).as_function(),
        "st": text().text_embedding.sentence_transformers(model_name=ST_REPO, op_config=ONE)
        .as_function(),
        "bert_onnx": text(True).text_embedding.transformers(
            model_name=BERT_REPO, pooling="mean", op_config=ONE).as_function(),
    }


def inputs(name: str):
    return IMAGE_FILES if CASES[name][0] == "image" else TEXTS


def library_references():
    """Each case computed by its library alone: its own model loading and preprocessing."""
    import open_clip
    import timm
    import timm.data
    import torch
    from PIL import Image
    from sentence_transformers import SentenceTransformer
    from transformers import AutoModel, AutoTokenizer

    import towhee_rt as towhee

    decode = towhee.dummy_input().image_decode.cv2_rgb().as_function()
    pictures = [Image.fromarray(rgb) for rgb in decode(IMAGE_FILES)]
    out = {}
    with torch.no_grad():
        for name, model_name in (("timm", "test_resnet"),
                                 ("timm_hub_onnx", "hf-hub:" + TIMM_REPO)):
            model = timm.create_model(model_name, pretrained=True, num_classes=0).eval()
            transform = timm.data.create_transform(
                **timm.data.resolve_data_config({}, model=model))
            out[name] = model(torch.stack([transform(p) for p in pictures])).numpy()
        clip, _, preprocess = open_clip.create_model_and_transforms("hf-hub:" + CLIP_REPO)
        clip.eval()
        out["clip_image"] = clip.encode_image(torch.stack([preprocess(p) for p in pictures])
                                              ).numpy()
        tokenizer = open_clip.get_tokenizer("hf-hub:" + CLIP_REPO)
        out["clip_text_onnx"] = clip.encode_text(tokenizer(TEXTS)).numpy()
        out["st"] = SentenceTransformer(ST_REPO, device="cpu").encode(TEXTS)
        tokenizer = AutoTokenizer.from_pretrained(BERT_REPO)
        bert = AutoModel.from_pretrained(BERT_REPO).eval()
        encoded = tokenizer(TEXTS, padding=True, truncation=True, return_tensors="pt")
        hidden = bert(**encoded).last_hidden_state
        mask = encoded["attention_mask"].unsqueeze(-1).float()
        out["bert_onnx"] = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    return out


def build(out_dir: str) -> dict:
    """Local vectors vs the libraries', the pretrained=False ones, and two repositories."""
    import towhee_rt as towhee
    from towhee_rt.accel.parity import relative_error

    out = Path(out_dir)
    references = library_references()
    pipes = pipelines()
    local = {name: np.stack(pipe(inputs(name))) for name, pipe in pipes.items()}
    result = {"cases": {}}
    for name, pipe in pipes.items():
        towhee.build_model_repo(pipe, out / "repo", model_name=name, overwrite=True)
        (card,) = pipe.model_card().values()
        result["cases"][name] = {
            "vs_library": relative_error(local[name], references[name]),
            "formats": list(pipe.formats().values()), "lock": card}
    random = {name: np.stack(pipe(inputs(name)))
              for name, pipe in pipelines(pretrained=False).items()
              if name.startswith(("timm", "clip"))}
    result["random_vs_pretrained"] = {name: relative_error(vec, local[name])
                                      for name, vec in random.items()}
    # The same pipelines, built again from scratch: the weights files must be the same bytes.
    for name, pipe in pipelines().items():
        towhee.build_model_repo(pipe, out / "again", model_name=name, overwrite=True)
    np.savez(out / "local.npz", **local)
    result["repo"] = str(out / "repo")
    result["readme_case"] = list(pipes)[-1]
    result["again"] = str(out / "again")
    return result


def errors(only=()) -> dict:
    """Every case (or those named in ``only``) on an empty cache: the build's error, and
    whether any vector came out."""
    import time

    import towhee_rt as towhee

    result = {}
    for name, pipe in pipelines().items():
        if only and name not in only:
            continue
        start = time.monotonic()
        try:
            vectors = pipe(inputs(name))
            result[name] = {"error": None, "vectors": len(vectors)}
        except towhee.ConfigError as exc:
            result[name] = {"error": str(exc), "type": type(exc).__name__}
        result[name]["seconds"] = time.monotonic() - start
    start = time.monotonic()
    try:  # Towhee's CLIP name: open_clip's 'openai' tag of ViT-B-32, from timm's hub repo
        towhee.dummy_input().image_text_embedding.clip_image().as_function().build()
        result["clip_default"] = {"error": None}
    except towhee.ConfigError as exc:
        result["clip_default"] = {"error": str(exc), "type": type(exc).__name__}
    result["clip_default"]["seconds"] = time.monotonic() - start
    if only:
        return result
    random = pipelines(pretrained=False)["timm"]
    result["timm_random_offline"] = list(np.asarray(random(IMAGE_FILES[0])).shape)
    return result


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


if __name__ == "__main__":
    command = sys.argv[1]
    payload = build(sys.argv[2]) if command == "build" else errors(sys.argv[2:])
    print("RESULT=" + json.dumps(payload), flush=True)
