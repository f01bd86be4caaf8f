"""Operators: the base class, tensor specs, and the registry of namespaced operator names.

The base class lives in ``towhee_rt.backends.operator_base`` (shipped into generated Triton
repositories, which must not import towhee_rt); this module re-exports it and owns the registry
that maps names to classes: the built-in names (``image_decode.cv2_rgb`` ...) to backend
classes, and the user's own names, added by :func:`towhee_rt.register` (``towhee_rt.registry``),
to theirs.
"""
from __future__ import annotations

import importlib
from typing import Dict, Tuple, Type

from .backends.operator_base import (Operator, OperatorInputError, OperatorLimitError, Param,
                                     TensorSpec)
from .errors import ConfigError

__all__ = ["Operator", "OperatorInputError", "OperatorLimitError", "Param", "TensorSpec",
           "OPERATORS", "operator_class", "user_operators"]

#: Registered operator name -> (backend module in ``towhee_rt.backends``, class name).
OPERATORS: Dict[str, Tuple[str, str]] = {
    "image_decode.cv2_rgb": ("image_decode", "CV2RGBDecode"),
    "image_decode.nvjpeg": ("image_decode_gpu", "NvJpegDecode"),
    "image_decode.dali": ("image_decode_gpu", "DaliDecode"),
    "image_embedding.timm": ("image_embedding", "TimmImageEmbedding"),
    "image_text_embedding.clip_image": ("clip", "ClipImageEmbedding"),
    "image_text_embedding.clip_text": ("clip", "ClipTextEmbedding"),
    "text_embedding.sentence_transformers": ("text_embedding", "SentenceTransformerEmbedding"),
    "text_embedding.transformers": ("transformers_embedding", "TransformersEmbedding"),
}


#: The user's operators, registered name -> class (``towhee_rt.register``).
_USER_OPERATORS: Dict[str, Type[Operator]] = {}


def namespaces() -> Dict[str, list]:
    """Namespace -> sorted operator names in it, e.g. ``{'image_decode': ['cv2_rgb', ...]}``."""
    out: Dict[str, list] = {}
    for full in list(OPERATORS) + list(_USER_OPERATORS):
        ns, name = full.split(".", 1)
        out.setdefault(ns, []).append(name)
    return {ns: sorted(names) for ns, names in sorted(out.items())}


def operator_class(name: str) -> Type[Operator]:
    """Import and return the class registered as ``name`` (e.g. ``'image_embedding.timm'``)."""
    if name in _USER_OPERATORS:
        return _USER_OPERATORS[name]
    module_name, class_name = _lookup(name)
    module = importlib.import_module(f"towhee_rt.backends.{module_name}")
    cls = getattr(module, class_name)
    if cls.name != name:
        raise ConfigError(f"operator class {module_name}.{class_name} is registered as {name!r} "
                          f"but declares name = {cls.name!r}; make them agree")
    return cls


def user_operators() -> Dict[str, Type[Operator]]:
    """The user's registered operators, name -> class (a copy)."""
    return dict(_USER_OPERATORS)


def add_user_operator(name: str, cls: Type[Operator]) -> None:
    """Register ``cls`` as ``name``; use :func:`towhee_rt.register`, which validates both.

    A name is taken once: a built-in name, or one registered by another class, is refused.
    The same class (same module and qualified name) may register its name again, as happens
    when a module is reloaded or a notebook cell is run again; the new definition wins.
    """
    if name in OPERATORS:
        raise ConfigError(f"operator name {name!r} is a built-in operator; register yours "
                          f"under another name, e.g. 'my_{name}'")
    taken = _USER_OPERATORS.get(name)
    if taken is not None and _where(taken) != _where(cls):
        raise ConfigError(f"operator name {name!r} is already registered by {_where(taken)}; "
                          f"choose another name for {_where(cls)}")
    _USER_OPERATORS[name] = cls


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _lookup(name: str) -> Tuple[str, str]:
    try:
        return OPERATORS[name]
    except KeyError:
        raise ConfigError(
            f"unknown operator {name!r}; registered operators are: "
            f"{', '.join(sorted(list(OPERATORS) + list(_USER_OPERATORS)))} (add your own with "
            f"towhee_rt.register)") from None
