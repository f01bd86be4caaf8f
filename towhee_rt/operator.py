"""Operators: the base class, tensor specs, and the registry of namespaced operator names.

The base class lives in ``towhee_rt.backends._operator`` (shipped into generated Triton
repositories, which must not import towhee_rt); this module re-exports it and owns the registry
that maps the seed's names (``image_decode.cv2_rgb`` ...) to backend classes.
"""
from __future__ import annotations

import importlib
from typing import Dict, Tuple, Type

from .backends._operator import (Operator, OperatorInputError, OperatorLimitError, Param,
                                 TensorSpec)
from .errors import ConfigError

__all__ = ["Operator", "OperatorInputError", "OperatorLimitError", "Param", "TensorSpec",
           "OPERATORS", "operator_class"]

#: Registered operator name -> (backend module in ``towhee_rt.backends``, class name).
OPERATORS: Dict[str, Tuple[str, str]] = {
    "image_decode.cv2_rgb": ("image_decode", "CV2RGBDecode"),
    "image_decode.nvjpeg": ("image_decode_gpu", "NvJpegDecode"),
    "image_decode.dali": ("image_decode_gpu", "DaliDecode"),
    "image_embedding.timm": ("image_embedding", "TimmImageEmbedding"),
    "image_text_embedding.clip_image": ("clip", "ClipImageEmbedding"),
    "image_text_embedding.clip_text": ("clip", "ClipTextEmbedding"),
    "text_embedding.sentence_transformers": ("text_embedding", "SentenceTransformerEmbedding"),
}


def namespaces() -> Dict[str, list]:
    """Namespace -> sorted operator names in it, e.g. ``{'image_decode': ['cv2_rgb', ...]}``."""
    out: Dict[str, list] = {}
    for full in OPERATORS:
        ns, name = full.split(".", 1)
        out.setdefault(ns, []).append(name)
    return {ns: sorted(names) for ns, names in sorted(out.items())}


def operator_class(name: str) -> Type[Operator]:
    """Import and return the class registered as ``name`` (e.g. ``'image_embedding.timm'``)."""
    module_name, class_name = _lookup(name)
    module = importlib.import_module(f"towhee_rt.backends.{module_name}")
    cls = getattr(module, class_name)
    if cls.name != name:
        raise ConfigError(f"operator class {module_name}.{class_name} is registered as {name!r} "
                          f"but declares name = {cls.name!r}; make them agree")
    return cls


def _lookup(name: str) -> Tuple[str, str]:
    try:
        return OPERATORS[name]
    except KeyError:
        raise ConfigError(
            f"unknown operator {name!r}; registered operators are: "
            f"{', '.join(sorted(OPERATORS))}") from None
