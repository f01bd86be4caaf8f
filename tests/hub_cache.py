"""A Hugging Face hub cache written by the tests, with tiny models the libraries saved themselves.

No hub is reachable from tests, so :func:`write_hub_cache` writes the cache the libraries
download into, in the hub's own layout (``models--org--name/refs/main`` holding a commit id,
``snapshots/<commit>/<file>`` symlinked to ``blobs/<sha256>``), with:

* ``timm/test_resnet.r160_in1k``: timm's ``test_resnet`` with seeded weights, saved by
  ``timm.models.save_for_hf`` (what ``timm.create_model('test_resnet', pretrained=True)`` and
  ``'hf-hub:timm/test_resnet.r160_in1k'`` load);
* ``testorg/tiny-clip``: an open_clip model with a tiny config (``open_clip_config.json`` with
  non-default preprocessing) and its weights (``'hf-hub:testorg/tiny-clip'``);
* ``testorg/tiny-st``: a 2-layer BERT sentence-transformers model (mean pooling, Normalize),
  saved by ``SentenceTransformer.save``;
* ``testorg/tiny-bert``: the same kind of BERT as a plain transformers model, saved by
  ``save_pretrained``.

Code that loads them runs in a subprocess (:func:`run_offline`) with ``HF_HUB_CACHE`` pointing
at the cache and ``HF_HUB_OFFLINE=1``, which huggingface_hub reads when it is imported.
"""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence

REPO_ROOT = Path(__file__).resolve().parents[1]
TIMM_REPO = "timm/test_resnet.r160_in1k"
CLIP_REPO = "testorg/tiny-clip"
ST_REPO = "testorg/tiny-st"
BERT_REPO = "testorg/tiny-bert"

TINY_CLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": 2, "width": 64, "head_width": 32,
                       "patch_size": 16},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2,
                     "layers": 2},
    },
    # Not open_clip's defaults, so that a test sees the repo's config being used.
    "preprocess_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25],
                       "interpolation": "bilinear", "resize_mode": "squash"},
}
_WORDS = ("[PAD] [UNK] [CLS] [SEP] [MASK] the a of and to in is it that was he for on are as "
          "with his they at be this from have or by one had not but what all were when we there "
          "can an your which their said if do will each about how up out them then she many "
          "some so these would other into has more her two like him see time could no make than "
          "first been its who now people my made over did down only way find use may water long "
          "little very after words called just where most know photo cat dog serves embeddings "
          "triton").split()
_WORDS += list("abcdefghijklmnopqrstuvwxyz.,!?'") + ["##" + c for c in "abcdefghijklmnopqrstuvwxyz"]


def write_hub_cache(root: Path) -> Dict[str, str]:
    """Write the four tiny models into a hub cache at ``root``; return repo id -> commit."""
    import torch

    root.mkdir(parents=True, exist_ok=True)
    commits = {}
    with tempfile.TemporaryDirectory() as tmp:
        sources = Path(tmp)
        torch.manual_seed(1234)
        _save_timm(sources / "timm")
        _save_clip(sources / "clip")
        _save_bert(sources / "bert", sources / "st")
        for repo, folder in ((TIMM_REPO, "timm"), (CLIP_REPO, "clip"), (ST_REPO, "st"),
                             (BERT_REPO, "bert")):
            commits[repo] = _put(root, repo, sources / folder)
    return commits


def _save_timm(target: Path) -> None:
    import timm
    from timm.models import save_for_hf

    model = timm.create_model("test_resnet.r160_in1k", pretrained=False)
    save_for_hf(model, str(target), safe_serialization=True)


def _save_clip(target: Path) -> None:
    import open_clip
    from safetensors.torch import save_file

    target.mkdir(parents=True)
    (target / "open_clip_config.json").write_text(json.dumps(TINY_CLIP_CONFIG, indent=2))
    model = open_clip.create_model("local-dir:" + str(target), load_weights=False)
    save_file(model.state_dict(), str(target / "open_clip_model.safetensors"))


def _save_bert(bert: Path, st: Path) -> None:
    from sentence_transformers import SentenceTransformer
    try:
        from sentence_transformers.sentence_transformer.modules import (Normalize, Pooling,
                                                                        Transformer)
    except ImportError:  # sentence-transformers < 6
        from sentence_transformers.models import Normalize, Pooling, Transformer
    from transformers import BertConfig, BertModel, BertTokenizer

    tokenizer = BertTokenizer(vocab={w: i for i, w in enumerate(_WORDS)}, do_lower_case=True)
    config = BertConfig(vocab_size=len(_WORDS), hidden_size=32, num_hidden_layers=2,
                        num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    BertModel(config).save_pretrained(str(bert))
    tokenizer.save_pretrained(str(bert))
    transformer = Transformer(str(bert), max_seq_length=24)
    model = SentenceTransformer(modules=[transformer, Pooling(32, "mean"), Normalize()],
                                device="cpu")
    model.save(str(st))


def _put(root: Path, repo_id: str, source: Path) -> str:
    """Store ``source``'s files as the ``main`` snapshot of ``repo_id``, the hub cache's way."""
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    repo = root / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    for path in sorted(source.rglob("*")):
        if not path.is_file():
            continue
        data = path.read_bytes()
        blob = repo / "blobs" / hashlib.sha256(data).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(data)
        link = repo / "snapshots" / commit / path.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(blob, link.parent), link)
    return commit


def offline_env(hub_cache: Path, towhee_cache: Path,
                extra: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The environment of a process that may only read ``hub_cache``."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("HF_", "TRANSFORMERS_", "HUGGINGFACE_"))}
    env.update(HF_HUB_CACHE=str(hub_cache), HF_HOME=str(hub_cache.parent / "hf_home"),
               HF_HUB_OFFLINE="1", HF_HUB_DISABLE_TELEMETRY="1",
               TOWHEE_RT_CACHE=str(towhee_cache), PYTHONPATH=str(REPO_ROOT))
    env.update(extra or {})
    return env


def run_offline(argv: Sequence[str], hub_cache: Path, towhee_cache: Path,
                timeout: float = 900, extra: Optional[Mapping[str, str]] = None) -> dict:
    """Run ``python -m <argv>`` in a subprocess that reads only ``hub_cache``; it prints one
    JSON line starting with ``RESULT=``, which is returned. ``extra``: more environment."""
    out = subprocess.run([sys.executable, "-m", *argv], cwd=str(REPO_ROOT),
                         env=offline_env(hub_cache, towhee_cache, extra), capture_output=True,
                         text=True, timeout=timeout)
    lines = [line for line in out.stdout.splitlines() if line.startswith("RESULT=")]
    if out.returncode != 0 or not lines:
        raise AssertionError(f"offline subprocess failed (exit {out.returncode}):\n"
                             f"{out.stdout[-3000:]}\n{out.stderr[-6000:]}")
    return json.loads(lines[-1][len("RESULT="):])


if __name__ == "__main__":
    print(write_hub_cache(Path(sys.argv[1])))
