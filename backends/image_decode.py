# SHIPPED: copied verbatim into every generated model (<model>/1/towhee_ops/). Imports only the
# standard library, numpy, declared third-party packages and sibling modules; never towhee_rt.
"""Image decode operators on the CPU: encoded image -> HxWx3 uint8 RGB.

Every item is encoded image data unless the operator runs in the user's own process (the
local pipeline sets the internal param ``in_process``), where a path, ``file://`` URL or
``http(s)://`` URL is read too. A served decoder (inside Triton) never opens a path or fetches a
URL a client sends, unless its params opt in: ``allow_paths`` (root directories) and
``allow_urls`` (host patterns). Where items are read from, and how much, is the source policy of
``image_sources.py`` (:class:`.image_sources.SourcePolicy`, :func:`.image_sources.read_source`); this module
checks the header (the decompression-bomb guard) and decodes.

The helpers here (:func:`read_header`, :func:`decode_cv2`, and :func:`read_source`, re-exported)
are shared by the GPU decoders in ``image_decode_gpu.py`` so that every decoder reads the same
inputs, applies the same limits and rejects bad data with the same messages.

This module is copied verbatim into Triton model directories: it imports only numpy, cv2, PIL
and its sibling ``operator_base`` and ``image_sources`` modules.
"""
from __future__ import annotations

import dataclasses
import io
import struct
from typing import Any, Dict, List, Mapping, Optional, Tuple

import numpy as np

from .base64_hint import looks_like_base64_image
from .cv2_preprocess import ResizeCrop
from .operator_base import (Operator, OperatorInputError, OperatorLimitError, Param, TensorSpec,
                            positive)
# Re-exported: the GPU decoders and earlier callers import these from here.
from .image_sources import (DEFAULT_MAX_BYTES, DEFAULT_TIMEOUT, SOURCE_PARAMS,  # noqa: F401
                       SourcePolicy, looks_unread_location, read_source)

#: Formats every decoder accepts (PIL's format names).
SUPPORTED_FORMATS = ("JPEG", "PNG", "WEBP", "BMP", "TIFF")
EXPECTED = "expected a JPEG, PNG, WebP, BMP or TIFF image"
#: 4096 x 4096 decoded pixels (48 MiB of RGB). A served image travels between the Triton
#: stubs in shared-memory pools that keep their largest size, so this bounds what one request
#: leaves behind (PIL's own limit, 89,478,485, would keep 2 x 256 MiB).
DEFAULT_MAX_PIXELS = 4096 * 4096


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What an image's header declares, read without decoding any pixel data."""

    format: str  # PIL's name: "JPEG", "PNG", ...
    width: int
    height: int
    mode: str  # PIL's mode: "RGB", "L", "CMYK", "RGBA", "I;16", ...


#: The params every decoder takes: the bomb guard, then the source policy's.
DECODE_PARAMS = Operator.params_spec + (
    Param("max_pixels", (int,), DEFAULT_MAX_PIXELS,
          "refuse images whose header declares more pixels (decompression-bomb guard)", positive),
) + SOURCE_PARAMS


def decode_params(params: Mapping[str, Any]) -> Dict[str, Any]:
    """The :data:`DECODE_PARAMS` values in ``params`` (to build a CPU decoder from a GPU one)."""
    return {p.name: params[p.name] for p in DECODE_PARAMS
            if p.name != "artifact_dir" and p.name in params}


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


#: Added to the error for base64 text sent where the image's bytes were expected (e.g. a JSON
#: request built with curl): the way to send the bytes themselves.
BASE64_HINT = ("; this looks like base64 text: send the file's raw bytes instead (over HTTP with "
               "Triton's binary tensor extension, header Inference-Header-Content-Length; see "
               "docs/http-json.md)")


def read_header(data: bytes, name: str, max_pixels: int = DEFAULT_MAX_PIXELS,
                min_side: Optional[int] = None) -> ImageHeader:
    """Parse the header of ``data`` and refuse it before decoding when it is not an image of a
    supported format or would decode to more than ``max_pixels`` pixels (a decompression bomb;
    a JPEG decoded at a reduced scale for ``min_side`` counts at that scale)."""
    if not data:
        raise OperatorInputError(f"empty input (0 bytes); {EXPECTED}", source=name)
    im = _open_header(data)
    if im is None:
        hint = BASE64_HINT if looks_like_base64_image(data) else ""
        raise OperatorInputError(f"not a recognised image (unknown format or corrupted header); "
                                 f"{EXPECTED}{hint}", source=name)
    width, height = im.size
    header = ImageHeader(im.format, width, height, im.mode)
    factor = jpeg_reduction(header, min_side)
    decoded = -(-width // factor) * -(-height // factor)
    if decoded > max_pixels:
        scale = f", {decoded:,} decoded at 1/{factor} scale" if factor > 1 else ""
        raise OperatorLimitError(
            f"the {im.format} header declares {width}x{height} = {width * height:,} pixels"
            f"{scale}, more than max_pixels={max_pixels:,} (decompression-bomb guard); raise "
            f"the operator param max_pixels if this image is trusted", source=name)
    if width <= 0 or height <= 0:
        raise OperatorInputError(f"the header declares an empty {width}x{height} image; "
                                 f"{EXPECTED}", source=name)
    return header


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
def _resize_crop_value(value: Any) -> Optional[str]:
    ok = len(value) == 3 and all(isinstance(v, int) and not isinstance(v, bool) and v > 0
                                 for v in value) and value[0] >= max(value[1], value[2])
    return None if ok else ("must be [shorter side, crop height, crop width]: three positive "
                            "ints, the shorter side at least the crop")


class CV2RGBDecode(Operator):
    """``image_decode.cv2_rgb``: decode images on the CPU with OpenCV into HxWx3 uint8 RGB.

    Items are encoded image bytes. In the local pipeline (your own process) an item may also be
    a path, a ``file://`` URL or an ``http(s)://`` URL; a served decoder takes every item as
    image data unless ``allow_paths`` / ``allow_urls`` opt in.

    Params:
        max_pixels: refuse images that would decode to more pixels than this, from their
            header, before any pixel is decoded (default 16,777,216 = 4096 x 4096: 48 MiB of
            RGB; a JPEG decoded at a reduced scale for ``min_side`` counts at that scale).
        max_bytes: refuse an encoded image larger than this many bytes, before decoding:
            bytes sent, a file read or a URL fetched (default 33,554,432: 32 MiB).
        timeout: seconds allowed in total to fetch one URL item: connect, headers, body and
            redirects (default 10).
        allow_paths: absolute root directories a served decoder reads files under when an item
            is a path or ``file://`` URL (default None: never); anything else, a symlink out of
            a root, a FIFO or a device is refused with one message that reveals nothing about
            which paths exist.
        allow_urls: host patterns (``"images.example.com"``, ``"*.cdn.example.com"``) a served
            decoder fetches http(s) URL items from, redirects included (default None: never).
        allow_private_networks: let ``allow_urls`` reach loopback, private, link-local and other
            non-public addresses (default False; the local pipeline always may).
        min_side: if set, a JPEG whose shorter side is at least twice this is decoded at 1/2,
            1/4 or 1/8 scale (libjpeg DCT scaling), keeping the shorter side >= ``min_side``.
            Set it to the model's resize size (e.g. 256 for resnet50's 224 crop) to save most
            of the decode and resize time of large photos; off by default (full-size output).
        resize_crop: ``[shorter side, crop height, crop width]``: resize the decoded image's
            shorter side to the first (OpenCV, area when shrinking), then centre-crop, so that
            the next step receives the model-sized image (pair it with the model's
            ``preprocess='cv2'`` and its own resize and crop, e.g. ``[235, 224, 224]`` for
            timm's resnet50, ``[224, 224, 224]`` for CLIP ViT-B/32); off by default.

    Example::

        op = CV2RGBDecode()
        op.ensure_setup("cpu")
        with open("photo.jpg", "rb") as f:
            rgb = op.process_batch({"image": [f.read()]})["image"][0]   # (H, W, 3) uint8
    """

    name = "image_decode.cv2_rgb"
    inputs = [TensorSpec("image", "bytes")]
    outputs = [TensorSpec("image", "uint8", (-1, -1, 3))]
    params_spec = DECODE_PARAMS + (
        Param("min_side", (int,), None, "decode large JPEGs at 1/2, 1/4 or 1/8 scale down to "
              "this shorter side", positive),
        Param("resize_crop", (list,), None, "[shorter side, crop height, crop width]: resize "
              "and centre-crop after decoding", _resize_crop_value),
    )

    def __init__(self, **params: Any):
        super().__init__(**params)
        self.max_pixels = self.params["max_pixels"]
        self.policy = SourcePolicy.from_params(self.params)
        self.min_side = self.params["min_side"]
        fit = self.params["resize_crop"]
        self.resize_crop = ResizeCrop(fit[0], (fit[1], fit[2])) if fit else None

    @property
    def timeout(self) -> float:
        """Seconds allowed in total to fetch one URL item."""
        return self.policy.timeout

    def setup(self, device: str = "cpu") -> None:
        """Nothing to load; imports OpenCV so that a missing install fails early."""
        super().setup(device)
        import cv2  # noqa: F401

    def load(self, item: Any) -> Tuple[str, bytes, ImageHeader]:
        """Read one item and check its size and header: ``(name, encoded bytes, header)``."""
        name, data = read_source(item, self.policy)
        try:
            return name, data, read_header(data, name, self.max_pixels,
                                           self.params.get("min_side"))
        except OperatorLimitError:
            raise
        except OperatorInputError as exc:
            if looks_unread_location(item, self.policy):
                raise OperatorInputError(f"{exc.message}; this item looks like a path or URL, "
                                         "but a served decoder takes every item as image data "
                                         "(its params allow_paths / allow_urls opt in to "
                                         "reading files / fetching URLs)",
                                         source=exc.source) from None
            raise

    def warmup_items(self) -> List[Tuple[Any, ...]]:
        """One small encoded JPEG (a served decoder decodes it once while it loads)."""
        import cv2

        gradient = np.tile(np.arange(0, 256, 4, dtype=np.uint8), (64, 1))
        _, encoded = cv2.imencode(".jpg", np.dstack([gradient] * 3))
        return [(encoded.tobytes(),)]

    def decode(self, item: Any) -> np.ndarray:
        """Decode one item into an HxWx3 uint8 RGB array (raises OperatorInputError)."""
        name, data, header = self.load(item)
        image = decode_cv2(data, name, header, jpeg_reduction(header, self.min_side))
        return image if self.resize_crop is None else self.resize_crop.apply(image)

    def process_batch(self, batch: Dict[str, List[Any]]) -> Dict[str, List[Any]]:
        """Decode every item of ``batch["image"]``; a bad item raises OperatorInputError."""
        return {"image": [self.decode(item) for item in batch["image"]]}
