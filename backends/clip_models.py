# SHIPPED: copied verbatim into every generated model (<model>/1/towhee_ops/). Imports only the
# standard library, numpy, declared third-party packages and sibling modules; never towhee_rt.
"""The open_clip side of the CLIP operators (``clip.py``): which model a name means, and the
export-friendly torch modules that wrap its towers.

Copied into generated Triton repositories: relative imports and third-party packages only;
open_clip and torch are imported when first needed.
"""
from __future__ import annotations

import functools
from typing import Dict, List, Optional

from .operator_base import OperatorParamError

#: Towhee's CLIP model names -> open_clip architecture names.
TOWHEE_NAMES = {
    "clip_vit_base_patch32": "ViT-B-32",
    "clip_vit_base_patch16": "ViT-B-16",
    "clip_vit_large_patch14": "ViT-L-14",
}
#: open_clip models named by their Hugging Face repo (config and weights in the repo).
HUB_PREFIX = "hf-hub:"
#: The pretrained tag ``pretrained=True`` loads when the architecture has it (Towhee's CLIP
#: names are OpenAI's models); otherwise open_clip's first listed tag for the architecture.
PREFERRED_TAGS = ("openai",)
#: Where a repository keeps the model's open_clip config (read with ``local-dir:``).
CONFIG_DIR = "open_clip"
CONFIG_FILE = "open_clip_config.json"


def open_clip_name(model_name: str) -> str:
    """The open_clip architecture for a Towhee name or an open_clip name with a built-in
    tokenizer; ``hf-hub:org/name`` names are returned as they are.

    Raises :class:`OperatorParamError` naming the valid choices. Architectures whose tokenizer
    comes from the Hugging Face hub (SigLIP, XLM-R...) are refused: a repository would have to
    ship that tokenizer too, which is not supported yet.
    """
    if model_name in TOWHEE_NAMES:
        return TOWHEE_NAMES[model_name]
    if model_name.startswith(HUB_PREFIX) and len(model_name) > len(HUB_PREFIX):
        return model_name
    offline = _offline_open_clip_names()
    if model_name in offline:
        return model_name
    raise OperatorParamError(
        f"CLIP: unknown model_name {model_name!r}; choose one of {sorted(TOWHEE_NAMES)}, "
        f"'hf-hub:<org>/<repo>' (an open_clip model on the Hugging Face hub) or an open_clip "
        f"architecture with a built-in tokenizer: {', '.join(offline)}")


def default_tag(arch: str) -> Optional[str]:
    """The pretrained tag ``pretrained=True`` means for ``arch`` (``None``: open_clip has none)."""
    import open_clip

    tags = open_clip.list_pretrained_tags_by_model(arch)
    preferred = [t for t in PREFERRED_TAGS if t in tags]
    return (preferred or tags or [None])[0]


@functools.lru_cache(maxsize=1)
def _offline_open_clip_names() -> List[str]:
    import open_clip

    names = []
    for name in open_clip.list_models():
        text_cfg = (open_clip.get_model_config(name) or {}).get("text_cfg", {})
        if not text_cfg.get("hf_tokenizer_name") and not text_cfg.get("hf_model_name"):
            names.append(name)
    return names


@functools.lru_cache(maxsize=1)
def encoders() -> Dict[str, type]:
    """The export-friendly wrapper modules (defined lazily: torch is imported here)."""
    import torch
    import torch.nn.functional as F

    class ClipImageEncoder(torch.nn.Module):
        """``encode_image``; keys ``visual.*`` as in an open_clip state dict."""

        def __init__(self, visual, normalize: bool):
            super().__init__()
            self.visual = visual
            self.normalize = normalize

        def forward(self, image):
            features = self.visual(image)
            return F.normalize(features, dim=-1) if self.normalize else features

    class ClipTextEncoder(torch.nn.Module):
        """``encode_text`` of a CLIP model whose image tower is dropped (keys ``clip.*``)."""

        def __init__(self, clip, normalize: bool):
            super().__init__()
            clip.visual = None  # encode_text never uses it; frees the memory
            self.clip = clip
            self.normalize = normalize

        def forward(self, text):
            return self.clip.encode_text(text, normalize=self.normalize)

    return {"image": ClipImageEncoder, "text": ClipTextEncoder}
