"""``image_embedding.timm``: pooled image features from any timm model.

Copied into generated Triton repositories: relative imports and third-party packages only;
timm and torch are imported when first needed so that importing this module is cheap.
"""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from ._model import ModelInput, ModelOperator
from ._operator import OperatorParamError, Param, TensorSpec
from ._preprocess import random_images, transform_images


class TimmImageEmbedding(ModelOperator):
    """Embed RGB images with a timm model's pooled features (the classifier removed).

    Params: ``model_name`` (required, any ``timm.list_models()`` name, e.g. ``'resnet50'`` or
    ``'resnet50.a1_in1k'``), ``checkpoint_path`` (a timm state dict, with or without its
    classifier; random weights seeded by ``seed`` otherwise), plus the :class:`ModelOperator`
    params. Each image is resized, cropped and normalised exactly as timm's own evaluation
    transform for that model (``timm.data.create_transform``).

    Example::

        op = TimmImageEmbedding(model_name='resnet50')
        op.ensure_setup('cpu')
        vec = op.process_batch({'image': [rgb_uint8_hwc]})['embedding'][0]   # shape (2048,)
    """

    name = "image_embedding.timm"
    inputs = [TensorSpec("image", "uint8", (-1, -1, 3))]
    params_spec = ModelOperator.params_spec + (
        Param("model_name", (str,), doc="any name from timm.list_models(), e.g. 'resnet50'",
              check=lambda v: None if v else "must not be empty"),
    )

    def __init__(self, **params: Any):
        super().__init__(**params)
        self._data_config = None
        self._transform = None

    @property
    def model_name(self) -> str:
        return self.params["model_name"]

    # -- preprocessing ------------------------------------------------------------------
    def data_config(self) -> Dict[str, Any]:
        """timm's evaluation data config for the model (input size, interpolation, mean/std...).

        Read from timm's registry of pretrained configs, which is where the model itself gets
        it, so preprocessing never needs the model built (e.g. for the ONNX format).
        """
        if self._data_config is None:
            import timm
            import timm.data
            from timm.models import get_pretrained_cfg

            if not timm.is_model(self.model_name.split(".", 1)[0]):
                raise OperatorParamError(f"image_embedding.timm: unknown model_name {self.model_name!r}; "
                                 "choose a name from timm.list_models(), e.g. 'resnet50'")
            cfg = get_pretrained_cfg(self.model_name)
            self._data_config = timm.data.resolve_data_config(
                pretrained_cfg=cfg.to_dict() if cfg is not None else None)
        return self._data_config

    def transform(self):
        """timm's evaluation transform for the model: PIL image -> normalised CHW tensor."""
        if self._transform is None:
            import timm.data

            self._transform = timm.data.create_transform(**self.data_config())
        return self._transform

    def preprocess(self, batch: Dict[str, List[Any]]) -> Dict[str, np.ndarray]:
        return {"image": transform_images(batch["image"], self.transform())}

    # -- model ----------------------------------------------------------------------------
    def build_torch_module(self):
        import timm

        # num_classes=0 removes the classifier: forward returns the pooled features [B, D].
        return timm.create_model(self.model_name, pretrained=False, num_classes=0)

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
