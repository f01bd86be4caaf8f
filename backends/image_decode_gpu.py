# SHIPPED: copied verbatim into every generated model (<model>/1/towhee_ops/). Imports only the
# standard library, numpy, declared third-party packages and sibling modules; never towhee_rt.
"""GPU image decode operators: nvJPEG (through torchvision) and NVIDIA DALI.

Both read every item with ``image_decode.cv2_rgb``'s ``load`` (a CPU decoder built from the same
params), so they take the same inputs (image data; paths and URLs only in process or where
``allow_paths`` / ``allow_urls`` opt in), apply the same byte cap, download deadline and
decompression-bomb guard, and reject bad data with the same messages. Both run on a machine
without CUDA: nvJPEG falls back to OpenCV, DALI runs its CPU decoder. Output items are numpy
HxWx3 uint8 RGB arrays; handing GPU tensors on to the next model without a copy (DLPack) is the
Triton adapter's job.

This module is copied verbatim into Triton model directories together with its siblings
``image_decode.py``, ``fetch.py`` and ``operator_base.py``; torch, torchvision and DALI are
imported lazily.
"""
from __future__ import annotations

import logging
import re
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

from .operator_base import Operator, OperatorInputError, Param, TensorSpec, positive
from .cpu import cpu_threads_per_instance
from .image_decode import (DECODE_PARAMS, EXPECTED, CV2RGBDecode, ImageHeader, decode_cv2,
                           decode_params)

logger = logging.getLogger("towhee_rt")


def _cuda_index(device: str) -> Optional[int]:
    """``"cuda:1"`` -> 1, ``"cuda"`` -> 0, anything else -> None."""
    if not device.startswith("cuda"):
        return None
    _, _, index = device.partition(":")
    return int(index) if index else 0


def jpeg_has_end(data: bytes) -> bool:
    """Whether a JPEG stream reaches its end-of-image marker after its first top-level scan.

    Walks the marker segments (skipping APPn payloads, where an EXIF thumbnail carries its own
    SOS/EOI) to the first SOS, then looks for EOI in the entropy-coded data, where 0xFF is
    always byte-stuffed. Catches truncated files that a GPU decoder might half-decode silently.
    """
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xDA:
            return data.find(b"\xff\xd9", pos) != -1
        if 0xD0 <= marker <= 0xD8 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2:pos + 4], "big")
    return False


class NvJpegDecode(Operator):
    """``image_decode.nvjpeg``: decode JPEGs on the GPU with nvJPEG (``torchvision.io``).

    Non-JPEG items, CMYK JPEGs and JPEGs nvJPEG refuses are decoded on the CPU with OpenCV.
    Without a CUDA device the whole batch is decoded with OpenCV (one warning is logged).
    Params: ``max_pixels``, ``max_bytes``, ``timeout``, ``allow_paths``, ``allow_urls`` and
    ``allow_private_networks`` as for ``image_decode.cv2_rgb``.
    """

    name = "image_decode.nvjpeg"
    inputs = [TensorSpec("image", "bytes")]
    outputs = [TensorSpec("image", "uint8", (-1, -1, 3))]
    params_spec = DECODE_PARAMS

    def __init__(self, **params: Any):
        super().__init__(**params)
        self._cpu = CV2RGBDecode(**decode_params(self.params))  # reads and checks items
        self._gpu: Optional[str] = None  # torch device string when decoding on the GPU

    def warmup_items(self) -> List[Tuple[Any, ...]]:
        """One small encoded JPEG, as for ``image_decode.cv2_rgb``."""
        return self._cpu.warmup_items()

    def setup(self, device: str = "cpu") -> None:
        """Pick the GPU named by ``device`` when CUDA is there, else fall back to OpenCV."""
        super().setup(device)
        self._cpu.ensure_setup("cpu")
        index = _cuda_index(device)
        cuda = False
        try:
            import torch
            import torchvision.io  # noqa: F401
            cuda = torch.cuda.is_available()
        except ImportError as exc:
            if index is not None:
                raise ImportError("image_decode.nvjpeg needs torch and torchvision for GPU "
                                  "decoding: pip install torch torchvision") from exc
        if cuda and index is not None:
            self._gpu = f"cuda:{index}"
        elif not cuda:
            logger.warning("image_decode.nvjpeg: no CUDA device, decoding on CPU with cv2")
        else:
            logger.warning("image_decode.nvjpeg: device %r requested, decoding on CPU with cv2",
                           device)

    def process_batch(self, batch: Dict[str, List[Any]]) -> Dict[str, List[Any]]:
        """Decode every item of ``batch["image"]``; a bad item raises OperatorInputError."""
        if self._gpu is None:
            return self._cpu.process_batch(batch)
        loaded = [self._cpu.load(item) for item in batch["image"]]
        out: List[Optional[np.ndarray]] = [None] * len(loaded)
        on_gpu = [i for i, (_, data, header) in enumerate(loaded)
                  if header.format == "JPEG" and header.mode in ("RGB", "L")]
        for i in on_gpu:
            name, data, header = loaded[i]
            if not jpeg_has_end(data):
                raise OperatorInputError(f"this JPEG is truncated (no end-of-image marker after "
                                         f"its scan data); {EXPECTED}", source=name)
        for i, rgb in zip(on_gpu, self._decode_gpu([loaded[i] for i in on_gpu])):
            out[i] = rgb
        for i, (name, data, header) in enumerate(loaded):
            if out[i] is None:
                out[i] = decode_cv2(data, name, header)
        return {"image": out}

    def _decode_gpu(self, loaded: List[Tuple[str, bytes, ImageHeader]]
                    ) -> List[Optional[np.ndarray]]:
        """nvJPEG batch decode; None where the GPU refused an item (it then goes to OpenCV)."""
        if not loaded:
            return []
        import torch
        from torchvision.io import ImageReadMode, decode_jpeg

        tensors = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for _, data, _ in loaded]

        def one_batch(items):
            chw = decode_jpeg(items, mode=ImageReadMode.RGB, device=self._gpu,
                              apply_exif_orientation=True)
            return [t.permute(1, 2, 0).contiguous().cpu().numpy() for t in chw]

        try:
            return one_batch(tensors)
        except (RuntimeError, ValueError):  # one bad item spoils the batch: retry one by one
            results: List[Optional[np.ndarray]] = []
            for t in tensors:
                try:
                    results.append(one_batch([t])[0])
                except (RuntimeError, ValueError):
                    results.append(None)
            return results


class DaliDecode(Operator):
    """``image_decode.dali``: decode with an NVIDIA DALI pipeline (``fn.decoders.image``).

    On ``cuda:N`` the pipeline uses DALI's ``mixed`` decoder (nvJPEG/nvImageCodec on the GPU);
    on ``cpu`` its CPU decoder. DALI applies the EXIF orientation itself.
    Params: ``max_pixels``, ``max_bytes``, ``timeout``, ``allow_paths``, ``allow_urls`` and
    ``allow_private_networks`` as for ``image_decode.cv2_rgb``; ``batch_size``
    (the largest batch one pipeline run takes, default 64) and ``num_threads`` (DALI CPU
    threads, default: this instance's share of the cores).
    """

    name = "image_decode.dali"
    inputs = [TensorSpec("image", "bytes")]
    outputs = [TensorSpec("image", "uint8", (-1, -1, 3))]
    params_spec = DECODE_PARAMS + (
        Param("batch_size", (int,), 64, "the largest batch one DALI pipeline run takes",
              positive),
        Param("num_threads", (int,), None, "DALI CPU threads", positive),
    )

    def __init__(self, **params: Any):
        super().__init__(**params)
        self._cpu = CV2RGBDecode(**decode_params(self.params))  # reads and checks items
        self.batch_size = self.params["batch_size"]
        self.num_threads = self.params["num_threads"]
        self._device_id: Optional[int] = None
        self._pipe = None  # built lazily; dropped after a failed run (DALI invalidates it)

    def warmup_items(self) -> List[Tuple[Any, ...]]:
        """One small encoded JPEG, as for ``image_decode.cv2_rgb``."""
        return self._cpu.warmup_items()

    def setup(self, device: str = "cpu") -> None:
        """Import DALI and build the pipeline for ``device``."""
        super().setup(device)
        try:
            import nvidia.dali  # noqa: F401
        except ImportError as exc:
            raise ImportError("image_decode.dali needs NVIDIA DALI: pip install "
                              "nvidia-dali-cuda120 (or the build matching your CUDA)") from exc
        self._device_id = _cuda_index(device)
        self._pipe = self._build()

    def _build(self):
        import nvidia.dali.fn as fn
        import nvidia.dali.types as types
        from nvidia.dali import pipeline_def

        decoder_device = "cpu" if self._device_id is None else "mixed"

        @pipeline_def(batch_size=self.batch_size, device_id=self._device_id,
                      num_threads=self.num_threads or min(4, cpu_threads_per_instance()),
                      prefetch_queue_depth=1)
        def decode_pipeline():
            raw = fn.external_source(name="raw", dtype=types.UINT8, ndim=1)
            return fn.decoders.image(raw, device=decoder_device, output_type=types.RGB)

        pipe = decode_pipeline()
        pipe.build()
        return pipe

    def process_batch(self, batch: Dict[str, List[Any]]) -> Dict[str, List[Any]]:
        """Decode every item of ``batch["image"]``; a bad item raises OperatorInputError."""
        loaded = [self._cpu.load(item) for item in batch["image"]]  # empty/bomb/format checks
        out: List[np.ndarray] = []
        for start in range(0, len(loaded), self.batch_size):
            out.extend(self._run(loaded[start:start + self.batch_size]))
        return {"image": out}

    def _run(self, chunk: List[Tuple[str, bytes, ImageHeader]]) -> List[np.ndarray]:
        if self._pipe is None:
            self._pipe = self._build()
        try:
            self._pipe.feed_input("raw", [np.frombuffer(data, np.uint8) for _, data, _ in chunk])
            (images,) = self._pipe.run()
        except RuntimeError as exc:
            self._pipe = None  # "Current pipeline object is no longer valid"
            match = re.search(r"sample #(\d+)", str(exc))
            if match and int(match.group(1)) < len(chunk):
                name = chunk[int(match.group(1))][0]
            elif len(chunk) == 1:
                name = chunk[0][0]
            else:
                name = f"one of {len(chunk)} images in this batch"
            raise OperatorInputError(f"DALI cannot decode it (truncated or corrupted data); "
                                     f"{EXPECTED}", source=name) from None
        if self._device_id is not None:
            images = images.as_cpu()
        # np.array copies: DALI reuses its output buffers on the next run.
        return [np.array(images[i]) for i in range(len(chunk))]
