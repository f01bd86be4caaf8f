"""``image_text_embedding.clip_image`` / ``clip_text``: CLIP embeddings with open_clip.

Both operators build the same open_clip model from the same params (random weights seeded by
``seed``, or a checkpoint), so image and text vectors of one configuration share a space.
Copied into generated Triton repositories: relative imports and third-party packages only;
open_clip and torch are imported when first needed.
"""
from __future__ import annotations

import functools
from typing import Any, Dict, List

import numpy as np

from ._model import ModelInput, ModelOperator
from ._operator import OperatorParamError, Param, TensorSpec
from ._preprocess import random_images, to_texts, transform_images

#: Towhee's CLIP model names -> open_clip architecture names.
TOWHEE_NAMES = {
    "clip_vit_base_patch32": "ViT-B-32",
    "clip_vit_base_patch16": "ViT-B-16",
    "clip_vit_large_patch14": "ViT-L-14",
}


def open_clip_name(model_name: str) -> str:
    """The open_clip architecture for a Towhee name or an open_clip name usable offline.

    Raises :class:`OperatorParamError` naming the valid choices. Architectures whose tokenizer comes from the
    Hugging Face hub (SigLIP, XLM-R...) are refused: no hub is reachable.
    """
    if model_name in TOWHEE_NAMES:
        return TOWHEE_NAMES[model_name]
    offline = _offline_open_clip_names()
    if model_name in offline:
        return model_name
    raise OperatorParamError(
        f"CLIP: unknown model_name {model_name!r}; choose one of {sorted(TOWHEE_NAMES)} "
        f"or an open_clip architecture with a built-in tokenizer: {', '.join(offline)}")


@functools.lru_cache(maxsize=1)
def _offline_open_clip_names() -> List[str]:
    import open_clip

    names = []
    for name in open_clip.list_models():
        text_cfg = (open_clip.get_model_config(name) or {}).get("text_cfg", {})
        if not text_cfg.get("hf_tokenizer_name") and not text_cfg.get("hf_model_name"):
            names.append(name)
    return names


class _ClipOperator(ModelOperator):
    """Shared params of the CLIP operators: ``model_name`` (default ``clip_vit_base_patch32``),
    ``normalize`` (L2-normalise the vectors inside the model, default False as in Towhee),
    ``checkpoint_path`` (an open_clip state dict, or this operator's own module state dict),
    ``seed`` and the other :class:`ModelOperator` params."""

    #: Prefix of the open_clip keys inside this operator's module state dict.
    _key_prefix = ""

    params_spec = ModelOperator.params_spec + (
        Param("model_name", (str,), "clip_vit_base_patch32",
              "a Towhee CLIP name or an open_clip architecture"),
        Param("normalize", (bool,), False, "L2-normalise the vectors inside the model"),
    )

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.arch = open_clip_name(self.params["model_name"])
        self.normalize = self.params["normalize"]

    def model_config(self) -> Dict[str, Any]:
        """open_clip's architecture config (``embed_dim``, ``vision_cfg``, ``text_cfg``)."""
        import open_clip

        return open_clip.get_model_config(self.arch)

    def _create_clip(self):
        import open_clip

        return open_clip.create_model(self.arch, pretrained=None, device="cpu")

    def adapt_state_dict(self, state: Dict[str, Any], module) -> Dict[str, Any]:
        # Accept a full open_clip checkpoint (both towers, maybe saved under DDP's 'module.'):
        # keep the keys of this operator's tower; the strict load then reports what is missing.
        own = list(module.state_dict())
        if set(state) == set(own):
            return state
        state = {k[len("module."):] if k.startswith("module.") else k: v for k, v in state.items()}
        out = {}
        for key in own:
            source = key[len(self._key_prefix):] if key.startswith(self._key_prefix) else key
            if key in state or source in state:
                out[key] = state[key] if key in state else state[source]
        return out


class ClipImageEmbedding(_ClipOperator):
    """``image_text_embedding.clip_image``: embed RGB images with CLIP's image tower.

    Images are preprocessed with open_clip's own evaluation transform for the architecture
    (resize the shorter side, centre crop, CLIP mean/std).

    Example::

        op = ClipImageEmbedding(model_name='clip_vit_base_patch32')
        op.ensure_setup('cpu')
        vec = op.process_batch({'image': [rgb_uint8_hwc]})['embedding'][0]   # shape (512,)
    """

    name = "image_text_embedding.clip_image"
    inputs = [TensorSpec("image", "uint8", (-1, -1, 3))]

    def __init__(self, **params: Any):
        super().__init__(**params)
        self._transform = None

    def image_size(self):
        """(height, width) of the model's input."""
        size = self.model_config()["vision_cfg"].get("image_size", 224)
        return tuple(size) if isinstance(size, (list, tuple)) else (size, size)

    def transform(self):
        """open_clip's evaluation transform (what ``create_model_and_transforms`` returns for
        ``pretrained=None``), built from the config without building the model."""
        if self._transform is None:
            from open_clip.transform import PreprocessCfg, image_transform_v2

            self._transform = image_transform_v2(PreprocessCfg(size=self.image_size()),
                                                 is_train=False)
        return self._transform

    def preprocess(self, batch: Dict[str, List[Any]]) -> Dict[str, np.ndarray]:
        return {"image": transform_images(batch["image"], self.transform())}

    def build_torch_module(self):
        return _encoders()["image"](self._create_clip().visual, self.normalize)

    def model_inputs(self) -> List[ModelInput]:
        return [ModelInput("image", "float32", (-1, 3) + self.image_size())]

    def example_inputs(self, batch_size: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        return {"image": random_images(batch_size, self.image_size(), rng)}


class ClipTextEmbedding(_ClipOperator):
    """``image_text_embedding.clip_text``: embed texts with CLIP's text tower.

    Texts (``str`` or UTF-8 ``bytes``) are tokenised with open_clip's own BPE tokenizer into
    int64 ``[batch, context_length]`` (77 for the OpenAI architectures; fixed, because the
    positional embedding has exactly that length).

    Example::

        op = ClipTextEmbedding(model_name='clip_vit_base_patch32')
        op.ensure_setup('cpu')
        vec = op.process_batch({'text': ['a photo of a cat']})['embedding'][0]   # shape (512,)
    """

    name = "image_text_embedding.clip_text"
    inputs = [TensorSpec("text", "bytes")]
    _key_prefix = "clip."

    def __init__(self, **params: Any):
        super().__init__(**params)
        self._tokenizer = None

    def tokenizer(self):
        """open_clip's tokenizer for the architecture (ships its vocabulary: works offline)."""
        if self._tokenizer is None:
            import open_clip

            self._tokenizer = open_clip.get_tokenizer(self.arch)
        return self._tokenizer

    def context_length(self) -> int:
        return int(self.model_config()["text_cfg"].get("context_length", 77))

    def preprocess(self, batch: Dict[str, List[Any]]) -> Dict[str, np.ndarray]:
        tokens = self.tokenizer()(to_texts(batch["text"]), context_length=self.context_length())
        return {"text": tokens.numpy().astype(np.int64)}

    def build_torch_module(self):
        return _encoders()["text"](self._create_clip(), self.normalize)

    def model_inputs(self) -> List[ModelInput]:
        return [ModelInput("text", "int64", (-1, self.context_length()))]

    def example_inputs(self, batch_size: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        # Well-formed sequences: <start> random tokens <end> then padding, as the tokenizer makes.
        tok, length = self.tokenizer(), self.context_length()
        sot, eot = tok.sot_token_id, tok.eot_token_id
        ids = np.zeros((batch_size, length), dtype=np.int64)
        for row in range(batch_size):
            n = int(rng.integers(0, length - 1))
            ids[row, 0] = sot
            ids[row, 1:n + 1] = rng.integers(1, min(sot, eot), n)
            ids[row, n + 1] = eot
        return {"text": ids}


@functools.lru_cache(maxsize=1)
def _encoders() -> Dict[str, type]:
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
