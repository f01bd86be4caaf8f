# SHIPPED: copied verbatim into every generated model (<model>/1/towhee_ops/). Imports only the
# standard library, numpy, declared third-party packages and sibling modules; never towhee_rt.
"""Shared input handling for the embedding operators: image items and text items.

Copied into generated Triton repositories next to the operators: relative imports and
third-party packages only (numpy, PIL; torch arrives through the transforms).
"""
from __future__ import annotations

from typing import Any, Callable, List, Sequence

import numpy as np

from .operator_base import OperatorInputError


def rgb_array(item: Any) -> np.ndarray:
    """One item as a checked HxWx3 uint8 array (what image_decode produces)."""
    array = np.asarray(item)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise OperatorInputError(
            f"expected an RGB image as a uint8 array of shape (height, width, 3), got "
            f"dtype {array.dtype} shape {array.shape}; decode images with image_decode.cv2_rgb")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise OperatorInputError(f"empty image of shape {array.shape}")
    return array


def to_pil_rgb(item: Any):
    """An RGB ``PIL.Image`` from one ``uint8`` HxWx3 array item (as image_decode produces)."""
    from PIL import Image

    return Image.fromarray(np.ascontiguousarray(rgb_array(item)))


def transform_images(items: Sequence[Any], transform: Callable) -> np.ndarray:
    """Apply a torchvision-style ``transform`` (PIL -> CHW tensor) to each item; stack to float32."""
    tensors = [transform(to_pil_rgb(item)) for item in items]
    return np.stack([np.asarray(t, dtype=np.float32) for t in tensors])


def to_text(item: Any) -> str:
    """A ``str`` from one text item (``str``, UTF-8 ``bytes`` or a numpy scalar of either)."""
    if isinstance(item, np.ndarray) and item.ndim == 0:
        item = item.item()
    if isinstance(item, str):
        return item
    if isinstance(item, (bytes, bytearray, memoryview)):
        try:
            return bytes(item).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise OperatorInputError(f"text is not valid UTF-8: {exc}") from None
    raise OperatorInputError(f"expected text as str or UTF-8 bytes, got {type(item).__name__}")


def to_texts(items: Sequence[Any]) -> List[str]:
    """Decode a batch of text items (see :func:`to_text`)."""
    return [to_text(item) for item in items]


def random_images(batch_size: int, size: Sequence[int], rng: np.random.Generator) -> np.ndarray:
    """Random normalised image tensors ``[batch, 3, H, W]`` (values in the range of real inputs)."""
    height, width = size
    return rng.uniform(-2.0, 2.0, (batch_size, 3, height, width)).astype(np.float32)
