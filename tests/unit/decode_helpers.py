"""Test helpers shared by the decoder tests (test_image_decode.py, test_decode_sources.py): the
decoder classes, the shared test images and a decoder per class.

Import the fixtures into a test module to use them there: ``from .decode_helpers import op``.
"""
from __future__ import annotations

from pathlib import Path

import pytest

from towhee_rt.backends.image_decode import CV2RGBDecode
from towhee_rt.backends.image_decode_gpu import DaliDecode, NvJpegDecode

#: ``image_decode.cv2_rgb`` and, on a machine without CUDA, the CPU paths of
#: ``image_decode.nvjpeg`` (OpenCV fallback) and ``image_decode.dali``.
OPERATORS = [CV2RGBDecode, NvJpegDecode, DaliDecode]


@pytest.fixture(scope="module")
def images() -> Path:
    """The shared test images: <repo>/../shared/testdata/images."""
    path = Path(__file__).resolve().parents[3] / "shared" / "testdata" / "images"
    if not path.is_dir():
        pytest.skip(f"test images not found at {path}")
    return path


@pytest.fixture(scope="module", params=OPERATORS, ids=lambda cls: cls.__name__)
def op(request):
    """One set-up decoder per class, as the local pipeline builds it (in the user's process,
    reading paths and URLs), shared by the module's tests."""
    decoder = request.param(in_process=True)
    decoder.ensure_setup("cpu")
    return decoder


def decode(op, *items):
    return op.process_batch({"image": list(items)})["image"]
