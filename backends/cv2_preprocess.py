# SHIPPED: copied verbatim into every generated model (<model>/1/towhee_ops/). Imports only the
# standard library, numpy, declared third-party packages and sibling modules; never towhee_rt.
"""Image preprocessing with OpenCV and numpy: the ``preprocess='cv2'`` path of the image models.

The reference path runs the library's own evaluation transform (timm's ``create_transform``,
open_clip's ``image_transform_v2``: PIL resize, centre crop, torch ToTensor + Normalize), one
image at a time. This module reads what that transform does from the transform itself (resize
the shorter side, centre crop, normalise) and does the same with ``cv2.resize`` and one numpy
expression per image: about 5x less CPU per image, with pixels that differ slightly (OpenCV's
area / bicubic kernels are not PIL's), which is why it is opt-in and measured
(bench/results/preprocess_check.md: end-to-end cosine to the reference on the test images).

An item already at the model's input size is only normalised, so a decoder that resized and
cropped it (``image_decode.cv2_rgb(resize_crop=...)``) hands over the model-sized image.

Copied into generated Triton repositories: relative imports and numpy / cv2 only.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from .operator_base import OperatorParamError, Param
from .embedding_inputs import rgb_array, transform_images

#: Values of the image models' ``preprocess`` param.
PREPROCESS_MODES = ("reference", "cv2")


def check_mode(value: Any) -> Optional[str]:
    """Param check of ``preprocess``."""
    return None if value in PREPROCESS_MODES else f"must be one of {', '.join(PREPROCESS_MODES)}"


#: The ``preprocess`` param of the image models.
PREPROCESS_PARAM = Param(
    "preprocess", (str,), "reference", "'reference': the library's own transform (PIL); "
    "'cv2': the same steps with OpenCV + numpy (faster, pixels differ slightly)", check_mode)


class ImagePreprocessing:
    """Mixin of the image models: ``preprocess_images(items)`` by the ``preprocess`` param,
    from the operator's reference ``transform()``."""

    _cv2_prep: Optional["Cv2Preprocess"] = None

    def preprocess_images(self, items: Sequence[Any]) -> np.ndarray:
        """Items -> float32 ``[batch, 3, H, W]`` model input."""
        if self.params["preprocess"] == "reference":
            return transform_images(items, self.transform())
        if self._cv2_prep is None:
            self._cv2_prep = Cv2Preprocess.from_transform(self.transform(), self.name)
        return self._cv2_prep(items)


@dataclasses.dataclass(frozen=True)
class ResizeCrop:
    """Resize the shorter side to ``short_side`` (aspect kept), then centre-crop ``crop``."""

    short_side: int
    crop: Tuple[int, int]
    #: ``'bicubic'`` or ``'bilinear'``: the kernel when enlarging (shrinking uses area).
    interpolation: str = "bicubic"

    def apply(self, image: np.ndarray) -> np.ndarray:
        """The resized and cropped HxWx3 uint8 image (torchvision's size and offset rules)."""
        import cv2

        height, width = image.shape[:2]
        if (height, width) == self.crop:
            return image
        short, long = (height, width) if height <= width else (width, height)
        new_long = int(self.short_side * long / short)  # torchvision truncates too
        size = (self.short_side, new_long) if height <= width else (new_long, self.short_side)
        if size != (height, width):
            shrink = size[0] < height
            flag = cv2.INTER_AREA if shrink else (
                cv2.INTER_CUBIC if self.interpolation == "bicubic" else cv2.INTER_LINEAR)
            image = cv2.resize(image, (size[1], size[0]), interpolation=flag)
        top = int(round((size[0] - self.crop[0]) / 2.0))
        left = int(round((size[1] - self.crop[1]) / 2.0))
        return image[top:top + self.crop[0], left:left + self.crop[1]]


@dataclasses.dataclass(frozen=True)
class Cv2Preprocess:
    """Resize + centre crop + normalise into a float32 ``[batch, 3, H, W]`` array."""

    resize: ResizeCrop
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]

    @classmethod
    def from_transform(cls, transform, what: str) -> "Cv2Preprocess":
        """The same steps as a torchvision evaluation ``transform`` (``Compose`` of Resize(int),
        CenterCrop, an RGB mode conversion, ToTensor and Normalize); OperatorParamError
        naming the step when the transform does anything else."""
        steps = list(getattr(transform, "transforms", [transform]))
        short = crop = mean = std = None
        interpolation = "bicubic"
        for step in steps:
            kind = type(step).__name__
            if kind == "Resize" and _one_int(step.size) is not None and short is None:
                short = _one_int(step.size)
                interpolation = str(getattr(step.interpolation, "value", step.interpolation))
            elif kind == "CenterCrop" and crop is None:
                crop = tuple(int(s) for s in step.size)
            elif kind == "Normalize":
                mean, std = _triple(step.mean), _triple(step.std)
            elif kind in ("ToTensor", "MaybeToTensor") or (
                    kind == "MaybeConvertMode" and getattr(step, "mode", "RGB") == "RGB"):
                continue
            else:
                raise OperatorParamError(
                    f"{what}: preprocess='cv2' reproduces Resize(shorter side) + CenterCrop + "
                    f"Normalize only; this model's transform also has {step!r}; use "
                    f"preprocess='reference'")
        if short is None or crop is None or mean is None or short < max(crop):
            raise OperatorParamError(
                f"{what}: preprocess='cv2' needs a transform that resizes the shorter side to at "
                f"least the crop, centre-crops and normalises; got {transform!r}; use "
                f"preprocess='reference'")
        if interpolation not in ("bicubic", "bilinear"):
            interpolation = "bilinear"
        return cls(ResizeCrop(short, crop, interpolation), mean, std)

    def __call__(self, items: Sequence[Any]) -> np.ndarray:
        height, width = self.resize.crop
        out = np.empty((len(items), 3, height, width), dtype=np.float32)
        scale = np.float32(1.0 / 255.0) / np.asarray(self.std, dtype=np.float32)
        shift = np.asarray(self.mean, dtype=np.float32) / np.asarray(self.std, dtype=np.float32)
        for i, item in enumerate(items):
            image = self.resize.apply(rgb_array(item))
            # HWC uint8 -> CHW float32 in one pass per channel: (x / 255 - mean) / std.
            for c in range(3):
                np.multiply(image[:, :, c], scale[c], out=out[i, c], casting="unsafe")
                out[i, c] -= shift[c]
        return out


def _one_int(size: Any) -> Optional[int]:
    if isinstance(size, int):
        return size
    if isinstance(size, (list, tuple)) and len(size) == 1:
        return int(size[0])
    return None


def _triple(values: Any) -> Tuple[float, float, float]:
    flat = [float(v) for v in np.asarray(values, dtype=np.float64).reshape(-1)]
    return (flat * 3)[:3] if len(flat) == 1 else tuple(flat[:3])
