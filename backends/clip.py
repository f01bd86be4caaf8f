# SHIPPED: copied verbatim into every generated model (<model>/1/towhee_ops/). Imports only the
# standard library, numpy, declared third-party packages and sibling modules; never towhee_rt.
"""``image_text_embedding.clip_image`` / ``clip_text``: CLIP embeddings with open_clip.

Both operators build the same open_clip model from the same params (open_clip's pretrained
weights by default, random weights seeded by ``seed`` with ``pretrained=False``, or a
checkpoint), so image and text vectors of one configuration share a space. Copied into generated
Triton repositories: relative imports and third-party packages only; open_clip and torch are
imported when first needed.
"""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from typing import Any, Dict, List, Optional

import numpy as np

# Re-exported: callers import the model names from here.
from .clip_models import (CONFIG_DIR, CONFIG_FILE, HUB_PREFIX, PREFERRED_TAGS,  # noqa: F401
                           TOWHEE_NAMES, default_tag, encoders, open_clip_name)
from .model_operator import ModelInput, ModelOperator
from .operator_base import OperatorParamError, Param, TensorSpec
from .cv2_preprocess import PREPROCESS_PARAM, ImagePreprocessing
from .embedding_inputs import random_images, to_texts
from .weights import download_hint, hub_or_cache, hub_source, jsonable, weights_unavailable


def _pretrained_value(value: Any) -> Optional[str]:
    return None if value is None or isinstance(value, bool) or value.strip() else \
        "must be True, False, None or an open_clip pretrained tag such as 'openai'"


class _ClipOperator(ModelOperator):
    """Shared params of the CLIP operators: ``model_name`` (default ``clip_vit_base_patch32``;
    an open_clip architecture, or ``'hf-hub:org/name'``), ``pretrained`` (default True: the
    architecture's default pretrained tag, ``'openai'`` for ViT-B-32/B-16/L-14 and Towhee's
    names, else open_clip's first listed one; a tag such as ``'laion2b_s34b_b79k'``; for
    ``hf-hub:`` names the repo's weights; False or None: random weights seeded by ``seed``),
    ``normalize`` (L2-normalise the vectors inside the model, default False as in Towhee),
    ``checkpoint_path`` (an open_clip state dict, or this operator's own module state dict; wins
    over ``pretrained``) and the other :class:`ModelOperator` params. Preprocessing (image
    transform, context length) follows the pretrained config of the tag or hub repo."""

    #: Prefix of the open_clip keys inside this operator's module state dict.
    _key_prefix = ""

    params_spec = ModelOperator.params_spec + (
        Param("model_name", (str,), "clip_vit_base_patch32",
              "a Towhee CLIP name, an open_clip architecture or 'hf-hub:org/name'"),
        Param("pretrained", (bool, str, type(None)), True,
              "True: the default pretrained tag; a tag such as 'openai'; False/None: random",
              _pretrained_value),
        Param("normalize", (bool,), False, "L2-normalise the vectors inside the model"),
    )

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.arch = open_clip_name(self.params["model_name"])
        self.normalize = self.params["normalize"]
        self.from_hub_repo = self.arch.startswith(HUB_PREFIX)
        self.tag = self._tag()
        self._model_config: Optional[Dict[str, Any]] = None
        self._hub_config: Optional[Dict[str, Any]] = None

    # -- which weights -----------------------------------------------------------------------
    def _tag(self) -> Optional[str]:
        """The open_clip pretrained tag (weights and preprocessing) of the params, or None."""
        import open_clip

        pretrained = self.params["pretrained"]
        if self.params["model_dir"] or pretrained in (False, None):
            return None
        if self.from_hub_repo:
            if isinstance(pretrained, str):
                raise OperatorParamError(
                    f"{self.name}: {self.arch!r} brings its own weights; pass pretrained=True "
                    f"(them) or False (random), not the tag {pretrained!r}")
            return None
        if pretrained is True:
            tag = default_tag(self.arch)
            if tag is None and not self.params["checkpoint_path"]:
                raise OperatorParamError(
                    f"{self.name}: open_clip has no pretrained weights for {self.arch!r}; pass "
                    f"pretrained=False for random weights (seeded by seed) or "
                    f"checkpoint_path='<weights file>'")
            return tag
        tags = open_clip.list_pretrained_tags_by_model(self.arch)
        tag = pretrained.lower().replace("-", "_")
        if tag not in tags:
            raise OperatorParamError(
                f"{self.name}: {pretrained!r} is not an open_clip pretrained tag of "
                f"{self.arch!r}; choose one of {', '.join(tags) or 'none (pretrained=False)'}")
        return tag

    def _tag_config(self) -> Dict[str, Any]:
        import open_clip

        return open_clip.get_pretrained_cfg(self.arch, self.tag) if self.tag else {}

    def _hub_repo(self) -> str:
        return self.arch[len(HUB_PREFIX):]

    def _config_file(self) -> Dict[str, Any]:
        """The ``open_clip_config.json`` of a served copy or of an ``hf-hub:`` model."""
        if self.params["model_dir"]:
            path = os.path.join(self.resolve_path(self.params["model_dir"]), CONFIG_FILE)
            with open(path, encoding="utf-8") as f:
                return json.load(f)
        if self._hub_config is None:
            from open_clip.pretrained import download_pretrained_from_hf

            try:
                with hub_or_cache():
                    path = download_pretrained_from_hf(self._hub_repo(), filename=CONFIG_FILE)
                with open(path, encoding="utf-8") as f:
                    config = json.load(f)
            except Exception as exc:  # noqa: BLE001 - every download/cache failure
                raise weights_unavailable(self.name, repr(self.arch), self._hub_repo(), exc, [
                    download_hint(self._hub_repo()),
                    "pass an open_clip architecture as model_name instead"],
                    kind="config") from None
            text_cfg = config.get("model_cfg", {}).get("text_cfg", {})
            if text_cfg.get("hf_tokenizer_name") or text_cfg.get("hf_model_name"):
                raise OperatorParamError(
                    f"{self.name}: {self.arch!r} needs a Hugging Face tokenizer or text model, "
                    "which towhee_rt does not ship into repositories yet; choose a model with "
                    "open_clip's built-in tokenizer")
            self._hub_config = config
        return self._hub_config

    # -- configs -------------------------------------------------------------------------------
    def model_config(self) -> Dict[str, Any]:
        """open_clip's architecture config (``embed_dim``, ``vision_cfg``, ``text_cfg``), with
        ``quick_gelu`` set when the pretrained tag was trained with it (as OpenAI's were)."""
        if self._model_config is None:
            import open_clip

            if self.params["model_dir"] or self.from_hub_repo:
                config = dict(self._config_file()["model_cfg"])
            else:
                config = open_clip.get_model_config(self.arch)
                if self._tag_config().get("quick_gelu"):
                    config["quick_gelu"] = True
            self._model_config = jsonable(config)
        return self._model_config

    def image_preprocess_config(self) -> Dict[str, Any]:
        """open_clip's image preprocessing config (size, mean, std, interpolation, resize mode):
        its defaults, overlaid by the tag's or the hub repo's, sized to the model's input."""
        locked = self.locked("preprocess") or {}
        if "image" in locked:
            return locked["image"]
        from open_clip.transform import PreprocessCfg, merge_preprocess_dict

        base = dataclasses.asdict(PreprocessCfg())
        if self.from_hub_repo:
            overlay = self._config_file().get("preprocess_cfg", {})
        else:
            overlay = self._tag_config()
        config = merge_preprocess_dict(base, overlay)
        size = self.model_config()["vision_cfg"].get("image_size", 224)
        config["size"] = list(size) if isinstance(size, (list, tuple)) else [size, size]
        return jsonable(config)

    def preprocess_config(self) -> Dict[str, Any]:
        return {"image": self.image_preprocess_config(),
                "context_length": self.context_length()}

    def context_length(self) -> int:
        return int(self.model_config()["text_cfg"].get("context_length", 77))

    # -- the model ---------------------------------------------------------------------------
    def _create_clip(self):
        import open_clip

        towers = dict(device="cpu", pretrained_image=False, pretrained_text=False)
        mode = self.weights_mode()
        if mode == "pretrained":
            return self._create_pretrained(towers)
        if self.params["model_dir"]:
            return open_clip.create_model("local-dir:" + self.resolve_path(
                self.params["model_dir"]), load_weights=False, **towers)
        if self.from_hub_repo:  # random weights: the repo's config only, no weights download
            with tempfile.TemporaryDirectory() as folder:
                self._write_config(folder)
                return open_clip.create_model("local-dir:" + folder, load_weights=False,
                                              **towers)
        return open_clip.create_model(self.arch, pretrained=None,
                                      force_quick_gelu=bool(self._tag_config().get("quick_gelu")),
                                      **towers)

    def _create_pretrained(self, towers: Dict[str, Any]):
        import open_clip
        from open_clip.pretrained import has_hf_hub

        tag_cfg = self._tag_config()
        if self.from_hub_repo:
            repo_id, what = self._hub_repo(), repr(self.arch)
            self._config_file()  # refuses hub tokenizers before anything is downloaded
        else:
            # open_clip's own split: 'org/repo/' (default file) or 'org/repo/file.bin'
            repo_id = os.path.split(tag_cfg.get("hf_hub", ""))[0] or None
            shown = self.params["model_name"]
            arch = f"open_clip {self.arch}, " if shown != self.arch else ""
            what = f"{shown!r} ({arch}pretrained tag {self.tag!r})"
        try:
            with hub_or_cache():
                model = open_clip.create_model(
                    self.arch, pretrained=None if self.from_hub_repo else self.tag,
                    force_quick_gelu=bool(tag_cfg.get("quick_gelu")), require_pretrained=True,
                    **towers)
        except Exception as exc:  # noqa: BLE001 - every download/cache failure, reported once
            raise weights_unavailable(self.name, what, repo_id, exc, [
                download_hint(repo_id),
                "pass checkpoint_path='<open_clip state dict>'",
                "pass pretrained=False for random weights (seeded by seed)"]) from None
        if repo_id and (self.from_hub_repo or has_hf_hub()):
            self.weights_source = hub_source(repo_id, tag=self.tag)
        else:
            self.weights_source = {"source": "url", "url": tag_cfg.get("url"), "tag": self.tag}
        return model

    def _write_config(self, folder) -> None:
        """The model's ``open_clip_config.json`` (what open_clip's ``local-dir:`` reads)."""
        config = {"model_cfg": self.model_config(),
                  "preprocess_cfg": self.image_preprocess_config()}
        with open(os.path.join(folder, CONFIG_FILE), "w", encoding="utf-8") as f:
            json.dump(config, f, indent=2, sort_keys=True)

    def served_files(self) -> Dict[str, Any]:
        def write(target) -> None:
            target.mkdir(parents=True, exist_ok=True)
            self._write_config(str(target))

        return {CONFIG_DIR: write}

    def served_params(self) -> Dict[str, Any]:
        return {**super().served_params(), "model_dir": CONFIG_DIR}

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


class ClipImageEmbedding(ImagePreprocessing, _ClipOperator):
    """``image_text_embedding.clip_image``: embed RGB images with CLIP's image tower.

    Images are preprocessed with open_clip's own evaluation transform for the model's pretrained
    config (e.g. resize the shorter side, centre crop, CLIP mean/std); ``preprocess='cv2'`` does
    the same steps with OpenCV and numpy (faster, pixels differ slightly: ``cv2_preprocess.py``).

    Example::

        op = ClipImageEmbedding(model_name='clip_vit_base_patch32', pretrained=False)  # random
        op.ensure_setup('cpu')
        vec = op.process_batch({'image': [rgb_uint8_hwc]})['embedding'][0]   # shape (512,)
    """

    name = "image_text_embedding.clip_image"
    inputs = [TensorSpec("image", "uint8", (-1, -1, 3))]
    params_spec = _ClipOperator.params_spec + (PREPROCESS_PARAM,)

    def __init__(self, **params: Any):
        super().__init__(**params)
        self._transform = None

    def image_size(self):
        """(height, width) of the model's input."""
        return tuple(self.image_preprocess_config()["size"])

    def transform(self):
        """open_clip's evaluation transform (what ``create_model_and_transforms`` returns for
        the same model and pretrained tag), built from the config without building the model."""
        if self._transform is None:
            from open_clip.transform import PreprocessCfg, image_transform_v2

            config = dict(self.image_preprocess_config())
            config["size"] = tuple(config["size"])
            config["mean"], config["std"] = tuple(config["mean"]), tuple(config["std"])
            self._transform = image_transform_v2(PreprocessCfg(**config), is_train=False)
        return self._transform

    def preprocess(self, batch: Dict[str, List[Any]]) -> Dict[str, np.ndarray]:
        return {"image": self.preprocess_images(batch["image"])}

    def build_torch_module(self):
        return encoders()["image"](self._create_clip().visual, self.normalize)

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

        op = ClipTextEmbedding(model_name='clip_vit_base_patch32', pretrained=False)
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
        """open_clip's tokenizer for the model (ships its vocabulary: works offline)."""
        if self._tokenizer is None:
            import open_clip

            if self.params["model_dir"]:
                name = "local-dir:" + self.resolve_path(self.params["model_dir"])
            else:
                name = self.arch
                if self.from_hub_repo:
                    self._config_file()  # refuses hub tokenizers
            self._tokenizer = open_clip.get_tokenizer(name)
        return self._tokenizer

    def context_length(self) -> int:
        locked = self.locked("preprocess") or {}
        if "context_length" in locked:
            return int(locked["context_length"])
        return super().context_length()

    def preprocess(self, batch: Dict[str, List[Any]]) -> Dict[str, np.ndarray]:
        tokens = self.tokenizer()(to_texts(batch["text"]), context_length=self.context_length())
        return {"text": tokens.numpy().astype(np.int64)}

    def build_torch_module(self):
        return encoders()["text"](self._create_clip(), self.normalize)

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
