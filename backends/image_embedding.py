# SHIPPED: copied verbatim into every generated model (<model>/1/towhee_ops/). Imports only the
# standard library, numpy, declared third-party packages and sibling modules; never towhee_rt.
"""``image_embedding.timm``: pooled image features from any timm model.

Copied into generated Triton repositories: relative imports and third-party packages only;
timm and torch are imported when first needed so that importing this module is cheap.
"""
from __future__ import annotations

import shutil
from typing import Any, Dict, List

import numpy as np

from .model_operator import ModelInput, ModelOperator
from .operator_base import OperatorParamError, Param, TensorSpec
from .cv2_preprocess import PREPROCESS_PARAM, ImagePreprocessing
from .embedding_inputs import random_images
from .weights import (cached_file, download_hint, hub_or_cache, hub_source, jsonable,
                       weights_unavailable)

#: Where a repository keeps the timm config of a model named ``hf-hub:...`` (``config.json``).
CONFIG_DIR = "timm_config"


class TimmImageEmbedding(ImagePreprocessing, ModelOperator):
    """Embed RGB images with a timm model's pooled features (the classifier removed).

    Params: ``model_name`` (required: a ``timm.list_models()`` name, e.g. ``'resnet50'``, a
    name with its pretrained tag, ``'resnet50.a1_in1k'``, or ``'hf-hub:org/name'``),
    ``pretrained`` (default True: the weights ``timm.create_model(model_name, pretrained=True)``
    loads, through the Hugging Face cache; False: random weights seeded by ``seed``),
    ``checkpoint_path`` (a timm state dict, with or without its classifier; wins over both),
    plus the :class:`ModelOperator` params. Each image is resized, cropped and normalised
    exactly as timm's own evaluation transform for the model's pretrained config
    (``timm.data.create_transform``); ``preprocess='cv2'`` does the same steps with OpenCV and
    numpy (about 5x less CPU, pixels differ slightly: see ``cv2_preprocess.py``).

    Example::

        op = TimmImageEmbedding(model_name='resnet50', pretrained=False)   # random weights
        op.ensure_setup('cpu')
        vec = op.process_batch({'image': [rgb_uint8_hwc]})['embedding'][0]   # shape (2048,)
    """

    name = "image_embedding.timm"
    inputs = [TensorSpec("image", "uint8", (-1, -1, 3))]
    params_spec = ModelOperator.params_spec + (
        Param("model_name", (str,), doc="any name from timm.list_models(), e.g. 'resnet50'",
              check=lambda v: None if v else "must not be empty"),
        Param("pretrained", (bool,), True, "load timm's pretrained weights (False: random)"),
        PREPROCESS_PARAM,
    )

    def __init__(self, **params: Any):
        super().__init__(**params)
        self._data_config = None
        self._transform = None

    @property
    def model_name(self) -> str:
        return self.params["model_name"]

    @property
    def from_hub_repo(self) -> bool:
        """Whether the model is named by its hub repo (``hf-hub:org/name``), config included."""
        return self.model_name.startswith(("hf-hub:", "hf_hub:"))

    # -- preprocessing ------------------------------------------------------------------
    def data_config(self) -> Dict[str, Any]:
        """timm's evaluation data config for the model (input size, interpolation, mean/std...).

        A served copy reads it from its lock. Otherwise it comes from the model's pretrained
        config: timm's registry for registry names (no model needed, e.g. for the ONNX format),
        the built model's for ``hf-hub:`` names (their config lives in the hub repo).
        """
        if self._data_config is None:
            import timm.data

            if self.locked("preprocess"):
                config = self.locked("preprocess")
            elif self.from_hub_repo or self.params["model_dir"]:
                config = timm.data.resolve_data_config({}, model=self.torch_module())
            else:
                config = timm.data.resolve_data_config(pretrained_cfg=self._registry_cfg())
            self._data_config = jsonable(config)
        return self._data_config

    def preprocess_config(self) -> Dict[str, Any]:
        return self.data_config()

    def _registry_cfg(self) -> Dict[str, Any]:
        """timm's pretrained config of a registry name (its default tag when none is given)."""
        import timm
        from timm.models import get_pretrained_cfg

        if not timm.is_model(self.model_name.split(".", 1)[0]):
            raise OperatorParamError(
                f"image_embedding.timm: unknown model_name {self.model_name!r}; choose a name "
                "from timm.list_models(), e.g. 'resnet50', or a hub repo as 'hf-hub:org/name'")
        cfg = get_pretrained_cfg(self.model_name)
        return cfg.to_dict() if cfg is not None else {}

    def transform(self):
        """timm's evaluation transform for the model: PIL image -> normalised CHW tensor."""
        if self._transform is None:
            import timm.data

            self._transform = timm.data.create_transform(**self.data_config())
        return self._transform

    def preprocess(self, batch: Dict[str, List[Any]]) -> Dict[str, np.ndarray]:
        return {"image": self.preprocess_images(batch["image"])}

    # -- model ----------------------------------------------------------------------------
    def build_torch_module(self):
        import timm

        # num_classes=0 removes the classifier: forward returns the pooled features [B, D].
        if self.params["model_dir"]:  # a served hf-hub model: its config was shipped
            name = "local-dir:" + self.resolve_path(self.params["model_dir"])
            return timm.create_model(name, pretrained=False, num_classes=0)
        if self.weights_mode() == "pretrained":
            return self._create_pretrained()
        if not self.from_hub_repo:
            self._registry_cfg()  # a clear error for an unknown name
            return timm.create_model(self.model_name, pretrained=False, num_classes=0)
        repo_id = self.model_name.split(":", 1)[1]
        try:  # the architecture comes from the hub repo's config.json
            with hub_or_cache():
                return timm.create_model(self.model_name, pretrained=False, num_classes=0)
        except Exception as exc:  # noqa: BLE001 - every download/cache failure, reported once
            raise weights_unavailable(self.name, repr(self.model_name), repo_id, exc, [
                download_hint(repo_id),
                "pass a timm registry name (timm.list_models()) instead"],
                kind="config") from None

    def _create_pretrained(self):
        import timm

        if self.from_hub_repo:
            repo_id, tag = self.model_name.split(":", 1)[1], None
        else:
            cfg = self._registry_cfg()
            repo_id, tag = cfg.get("hf_hub_id"), cfg.get("tag")
            if not (repo_id or cfg.get("url") or cfg.get("file")):
                raise OperatorParamError(
                    f"image_embedding.timm: timm has no pretrained weights for "
                    f"{self.model_name!r}; pass pretrained=False for random weights, "
                    f"checkpoint_path='<weights file>', or a name with a pretrained tag "
                    f"(timm.list_pretrained('{self.model_name.split('.', 1)[0]}*'))")
        try:
            with hub_or_cache():
                module = timm.create_model(self.model_name, pretrained=True, num_classes=0)
        except Exception as exc:  # noqa: BLE001 - every download/cache failure, reported once
            what = repr(self.model_name) + (f" (pretrained tag {tag!r})" if tag else "")
            ways = [download_hint(repo_id),
                    "pass checkpoint_path='<weights .safetensors or torch state dict>'",
                    "pass pretrained=False for random weights (seeded by seed)"]
            if self.from_hub_repo:  # the architecture too comes from the repo
                ways[1:] = ["pass a timm registry name (timm.list_models()) with "
                            "checkpoint_path='<weights>' or pretrained=False"]
            raise weights_unavailable(self.name, what, repo_id, exc, ways) from None
        pretrained_cfg = getattr(module, "pretrained_cfg", {}) or {}
        if repo_id and self._loaded_from_hub(pretrained_cfg):
            self.weights_source = hub_source(repo_id, tag=pretrained_cfg.get("tag") or tag)
        else:
            self.weights_source = {"source": "url", "url": pretrained_cfg.get("url"),
                                   "tag": pretrained_cfg.get("tag") or tag}
        return module

    @staticmethod
    def _loaded_from_hub(pretrained_cfg: Dict[str, Any]) -> bool:
        # timm prefers the hub when huggingface_hub is installed (its _resolve_pretrained_source).
        from timm.models._hub import has_hf_hub

        return bool(pretrained_cfg.get("hf_hub_id")) and has_hf_hub()

    def served_files(self) -> Dict[str, Any]:
        if not self.from_hub_repo:
            return {}
        source = cached_file(self.model_name.split(":", 1)[1], "config.json")

        def write(target) -> None:  # the hub repo's own config, read by timm's 'local-dir:'
            target.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source, target / "config.json")

        return {CONFIG_DIR: write}

    def served_params(self) -> Dict[str, Any]:
        params = super().served_params()
        if self.from_hub_repo:
            params["model_dir"] = CONFIG_DIR
        return params

    def model_inputs(self) -> List[ModelInput]:
        _, height, width = self.data_config()["input_size"]
        return [ModelInput("image", "float32", (-1, 3, height, width))]

    def example_inputs(self, batch_size: int, rng: np.random.Generator) -> Dict[str, np.ndarray]:
        return {"image": random_images(batch_size, self.data_config()["input_size"][1:], rng)}

    def adapt_state_dict(self, state: Dict[str, Any], module) -> Dict[str, Any]:
        # A timm checkpoint of the full model carries the classifier this module dropped.
        own = set(module.state_dict())
        heads = getattr(module, "pretrained_cfg", {}).get("classifier") or ()
        heads = tuple(heads) if isinstance(heads, (list, tuple)) else (heads,)

        def is_head(key: str) -> bool:
            return any(key == h or key.startswith(h + ".") for h in heads)

        return {k: v for k, v in state.items() if k in own or not is_head(k)}
