"""Image decode operators on the CPU: encoded image (or its path / URL) -> HxWx3 uint8 RGB.

The helpers here (:func:`read_source`, :func:`read_header`, :func:`decode_cv2`) are shared by
the GPU decoders in ``image_decode_gpu.py`` so that every decoder reads the same inputs, applies
the same decompression-bomb guard and rejects bad data with the same messages.

This module is copied verbatim into Triton model directories: it imports only numpy, cv2, PIL
and its sibling ``_operator`` module.
"""
from __future__ import annotations

import dataclasses
import io
import os
import struct
from typing import Any, Dict, List, Optional, Tuple
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np

from ._operator import (Operator, OperatorInputError, OperatorLimitError, Param, TensorSpec,
                        positive)

#: Formats every decoder accepts (PIL's format names).
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")
EXPECTED = "expected a JPEG, PNG, WebP, BMP or TIFF image"
#: Same default limit as PIL's ``Image.MAX_IMAGE_PIXELS``.
DEFAULT_MAX_PIXELS = 89_478_485
DEFAULT_TIMEOUT = 10.0
#: A bytes item shorter than this, without NUL, that starts with one of these is a location.
_MAX_LOCATION_BYTES = 4096
_LOCATION_PREFIXES = (b"/", b"file://", b"http://", b"https://")


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What an image's header declares, read without decoding any pixel data."""

    format: str  # PIL's name: "JPEG", "PNG", ...
    width: int
    height: int
    mode: str  # PIL's mode: "RGB", "L", "CMYK", "RGBA", "I;16", ...


#: The params every decoder takes.
DECODE_PARAMS = Operator.params_spec + (
    Param("max_pixels", (int,), DEFAULT_MAX_PIXELS,
          "refuse images whose header declares more pixels (decompression-bomb guard)", positive),
    Param("timeout", (int, float), DEFAULT_TIMEOUT, "seconds allowed for an http(s) download",
          positive),
)


# -- reading the input ---------------------------------------------------------------------------
def _as_location(item: Any) -> Optional[str]:
    """The path/URL an item names, or None when the item is encoded image data."""
    if isinstance(item, str):
        return item
    if isinstance(item, os.PathLike):
        return os.fspath(item)
    if isinstance(item, (bytes, bytearray)) and len(item) < _MAX_LOCATION_BYTES \
            and bytes(item[:8]).startswith(_LOCATION_PREFIXES) and b"\x00" not in item:
        try:
            return bytes(item).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def _as_bytes(item: Any) -> bytes:
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, np.ndarray):
        if item.dtype == np.object_ and item.ndim == 0:
            return _as_bytes(item.item())
        if item.dtype == np.uint8 and item.ndim == 1:
            return item.tobytes()
    raise OperatorInputError("expected encoded image bytes, a file path or an http(s):// / "
                             "file:// URL", source=f"<{type(item).__name__} item>")


def _fetch(url: str, timeout: float) -> bytes:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310 - http(s) only
            return resp.read()
    except urllib.error.HTTPError as exc:
        raise OperatorInputError(f"HTTP {exc.code} {exc.reason}; expected a URL that serves a "
                                 "JPEG, PNG, WebP, BMP or TIFF image", source=url) from None
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise OperatorInputError(f"download failed ({reason}); check the URL, or raise the "
                                 f"operator param timeout (now {timeout}s)", source=url) from None


def read_source(item: Any, timeout: float = DEFAULT_TIMEOUT) -> Tuple[str, bytes]:
    """Return ``(name, encoded bytes)`` for one input item.

    ``item`` is encoded image data (bytes), or a local path, ``file://`` URL or ``http(s)://``
    URL (as ``str``, ``os.PathLike`` or short bytes). ``name`` is what error messages call the
    item: the path/URL, else ``"<encoded image, N bytes>"``.
    """
    location = _as_location(item)
    if location is None:
        data = _as_bytes(item)
        return f"<encoded image, {len(data)} bytes>", data
    if location.startswith(("http://", "https://")):
        return location, _fetch(location, timeout)
    path = url2pathname(urlparse(location).path) if location.startswith("file://") else location
    try:
        with open(path, "rb") as f:
            return location, f.read()
    except OSError as exc:
        raise OperatorInputError(f"cannot read the file ({exc.strerror or exc}); expected a "
                                 "readable JPEG, PNG, WebP, BMP or TIFF file",
                                 source=location) from None


# -- the header and the decompression-bomb guard --------------------------------------------------
def _open_header(data: bytes):
    """A PIL image object that has parsed only the header, or None for unrecognised data.

    Calls PIL's format plugins directly (as ``Image.open`` does) so that PIL's own global
    decompression-bomb check does not run: ``max_pixels`` is ours to apply.
    """
    from PIL import Image

    Image.init()
    prefix = data[:16]
    for fmt in SUPPORTED_FORMATS:
        if fmt not in Image.OPEN:  # plugin not built into this PIL
            continue
        factory, accept = Image.OPEN[fmt]
        ok = accept(prefix) if accept else True
        if not ok or isinstance(ok, str):
            continue
        try:
            return factory(io.BytesIO(data), "")
        except (SyntaxError, IndexError, TypeError, ValueError, struct.error, OSError, EOFError):
            return None
    return None


def read_header(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS) -> ImageHeader:
    """Parse the header of ``data`` and refuse it before decoding when it is not an image of a
    supported format or declares more than ``max_pixels`` pixels (a decompression bomb)."""
    if not data:
        raise OperatorInputError(f"empty input (0 bytes); {EXPECTED}", source=name)
    im = _open_header(data)
    if im is None:
        raise OperatorInputError(f"not a recognised image (unknown format or corrupted header); "
                                 f"{EXPECTED}", source=name)
    width, height = im.size
    if width * height > max_pixels:
        raise OperatorLimitError(
            f"the {im.format} header declares {width}x{height} = {width * height:,} pixels, more "
            f"than max_pixels={max_pixels:,} (decompression-bomb guard); raise the operator "
            f"param max_pixels if this image is trusted", source=name)
    if width <= 0 or height <= 0:
        raise OperatorInputError(f"the header declares an empty {width}x{height} image; "
                                 f"{EXPECTED}", source=name)
    return ImageHeader(im.format, width, height, im.mode)


def jpeg_reduction(header: ImageHeader, min_side: Optional[int]) -> int:
    """The largest libjpeg DCT scale (1, 2, 4 or 8) that keeps the shorter side >= ``min_side``."""
    if not min_side or header.format != "JPEG":
        return 1
    shorter = min(header.width, header.height)
    for factor in (8, 4, 2):
        if shorter // factor >= min_side:
            return factor
    return 1


def decode_cv2(data: bytes, name: str, header: ImageHeader, reduction: int = 1) -> np.ndarray:
    """Decode ``data`` with OpenCV into HxWx3 uint8 RGB.

    ``reduction`` 2, 4 or 8 decodes a JPEG at that fraction of its size with libjpeg's DCT
    scaling (much less work than decoding everything and resizing afterwards).
    ``IMREAD_COLOR`` applies the EXIF orientation, expands gray to 3 channels, drops alpha,
    converts CMYK (Adobe-inverted included) to RGB and scales 16-bit samples to 8 bits.
    OpenCV returns None for truncated or corrupted data (libjpeg's "premature end" included).
    """
    import cv2

    try:
        flag = {1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2,
                4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}[reduction]
        bgr = cv2.imdecode(np.frombuffer(data, np.uint8), flag)
    except cv2.error as exc:
        raise OperatorInputError(f"OpenCV cannot decode this {header.format} image "
                                 f"({str(exc).strip().splitlines()[-1]}); {EXPECTED}",
                                 source=name) from None
    if bgr is None or bgr.ndim != 3 or bgr.shape[2] != 3:
        raise OperatorInputError(f"cannot decode this {header.format} image (truncated or "
                                 f"corrupted data); {EXPECTED}", source=name)
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


# -- the operator ---------------------------------------------------------------------------------
class CV2RGBDecode(Operator):
    """``image_decode.cv2_rgb``: decode images on the CPU with OpenCV into HxWx3 uint8 RGB.

    Params:
        max_pixels: refuse images whose header declares more pixels than this (default
            89,478,485, PIL's limit), before any pixel is decoded.
        timeout: seconds allowed for an http(s) download (default 10).
        min_side: if set, a JPEG whose shorter side is at least twice this is decoded at 1/2,
            1/4 or 1/8 scale (libjpeg DCT scaling), keeping the shorter side >= ``min_side``.
            Set it to the model's resize size (e.g. 256 for resnet50's 224 crop) to save most
            of the decode and resize time of large photos; off by default (full-size output).

    Example::

        op = CV2RGBDecode()
        op.ensure_setup("cpu")
        rgb = op.process_batch({"image": ["photo.jpg"]})["image"][0]   # (H, W, 3) uint8
    """

    name = "image_decode.cv2_rgb"
    inputs = [TensorSpec("image", "bytes")]
    outputs = [TensorSpec("image", "uint8", (-1, -1, 3))]
    params_spec = DECODE_PARAMS + (
        Param("min_side", (int,), None, "decode large JPEGs at 1/2, 1/4 or 1/8 scale down to "
              "this shorter side", positive),
    )

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.max_pixels = self.params["max_pixels"]
        self.timeout = float(self.params["timeout"])
        self.min_side = self.params["min_side"]

    def setup(self, device: str = "cpu") -> None:
        """Nothing to load; imports OpenCV so that a missing install fails early."""
        super().setup(device)
        import cv2  # noqa: F401

    def load(self, item: Any) -> Tuple[str, bytes, ImageHeader]:
        """Read one item and check its header: ``(name, encoded bytes, header)``."""
        name, data = read_source(item, self.timeout)
        return name, data, read_header(data, name, self.max_pixels)

    def decode(self, item: Any) -> np.ndarray:
        """Decode one item into an HxWx3 uint8 RGB array (raises OperatorInputError)."""
        name, data, header = self.load(item)
        return decode_cv2(data, name, header, jpeg_reduction(header, self.min_side))

    def process_batch(self, batch: Dict[str, List[Any]]) -> Dict[str, List[Any]]:
        """Decode every item of ``batch["image"]``; a bad item raises OperatorInputError."""
        return {"image": [self.decode(item) for item in batch["image"]]}
