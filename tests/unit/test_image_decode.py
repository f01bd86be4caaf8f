"""Image decode operators against the shared test images (good and bad).

Every test runs for each decoder class: ``image_decode.cv2_rgb`` and, on a machine without
CUDA, the CPU paths of ``image_decode.nvjpeg`` (OpenCV fallback) and ``image_decode.dali``.
Where items are read from (paths, URLs, allowed roots, in process) is tested in
test_decode_sources.py.
"""
from __future__ import annotations

import io
import logging
import resource
import time
import tracemalloc

import numpy as np
import pytest
from PIL import Image, ImageOps

from towhee_rt.backends.operator_base import OperatorInputError
from towhee_rt.backends.batching import process_items
from towhee_rt.backends.image_decode_gpu import DaliDecode, NvJpegDecode, jpeg_has_end

from .decode_helpers import OPERATORS, decode, images, op  # noqa: F401 - fixtures

#: From the table in shared/testdata/README.md: decoded (H, W) of every good image.
GOOD_SHAPES = {
    "astronaut.jpg": (512, 512),
    "chelsea.jpg": (300, 451),
    "coffee.jpg": (400, 600),
    "rocket.jpg": (427, 640),
    "coffee_1920x1280.jpg": (1280, 1920),
    "chelsea_progressive.jpg": (300, 451),
    "chelsea_exif_rot90.jpg": (451, 300),
    "astronaut_cmyk.jpg": (512, 512),
    "camera_gray.jpg": (512, 512),
    "camera_gray.png": (512, 512),
    "chelsea_rgba.png": (300, 451),
    "rocket.webp": (427, 640),
}
BAD = ["empty.jpg", "not_an_image.jpg", "truncated.jpg", "corrupted_scan.jpg",
       "bomb_50000x50000.png"]


def pil_rgb(path) -> np.ndarray:
    return np.asarray(ImageOps.exif_transpose(Image.open(path)).convert("RGB"))


def mean_abs(a, b) -> float:
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# -- good images ----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(GOOD_SHAPES))
def test_good_image_decodes_to_listed_shape(op, images, name):
    (rgb,) = decode(op, str(images / "good" / name))
    assert isinstance(rgb, np.ndarray) and rgb.dtype == np.uint8
    assert rgb.shape == GOOD_SHAPES[name] + (3,)
    assert mean_abs(rgb, pil_rgb(images / "good" / name)) < 3  # RGB order, not BGR


def test_whole_good_batch_in_order(op, images):
    names = sorted(GOOD_SHAPES)
    out = decode(op, *[str(images / "good" / n) for n in names])
    assert [a.shape[:2] for a in out] == [GOOD_SHAPES[n] for n in names]


def test_exif_rot90_comes_out_rotated_clockwise(op, images):
    chelsea, rotated = decode(op, str(images / "good" / "chelsea.jpg"),
                              str(images / "good" / "chelsea_exif_rot90.jpg"))
    assert mean_abs(rotated, np.rot90(chelsea, k=-1)) < 2  # orientation 6 = 90 degrees clockwise
    assert mean_abs(rotated, np.rot90(chelsea, k=1)) > 20  # and not the other way round


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_matches_pil(op, images, orientation):
    photo = Image.open(images / "good" / "chelsea.jpg").crop((100, 50, 196, 114))  # 96x64
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    photo.save(buf, format="JPEG", quality=95, exif=exif.tobytes())
    (rgb,) = decode(op, buf.getvalue())
    expected = pil_rgb(io.BytesIO(buf.getvalue()))
    assert rgb.shape == expected.shape
    assert mean_abs(rgb, expected) < 3


def test_rgba_png_drops_alpha(op, images):
    rgba, jpeg = decode(op, str(images / "good" / "chelsea_rgba.png"),
                        str(images / "good" / "chelsea.jpg"))
    assert rgba.shape == jpeg.shape
    pixels = np.asarray(Image.open(images / "good" / "chelsea_rgba.png"))
    assert pixels.shape[2] == 4 and np.array_equal(rgba, pixels[..., :3])


@pytest.mark.parametrize("name", ["camera_gray.jpg", "camera_gray.png"])
def test_gray_gives_three_equal_channels(op, images, name):
    (rgb,) = decode(op, str(images / "good" / name))
    assert np.array_equal(rgb[..., 0], rgb[..., 1]) and np.array_equal(rgb[..., 1], rgb[..., 2])
    assert mean_abs(rgb[..., 0], np.asarray(Image.open(images / "good" / name))) < 1


def test_cmyk_close_to_pil_conversion(op, images):
    (rgb,) = decode(op, str(images / "good" / "astronaut_cmyk.jpg"))
    assert mean_abs(rgb, pil_rgb(images / "good" / "astronaut_cmyk.jpg")) < 3
    (plain,) = decode(op, str(images / "good" / "astronaut.jpg"))
    assert mean_abs(rgb, plain) < 5  # not colour-inverted


def test_16_bit_png_becomes_8_bit(op):
    import cv2

    deep = (np.arange(48 * 64 * 3).reshape(48, 64, 3) * 337 % 65536).astype(np.uint16)
    ok, png = cv2.imencode(".png", deep)  # BGR on disk
    assert ok
    (rgb,) = decode(op, png.tobytes())
    assert rgb.dtype == np.uint8 and rgb.shape == (48, 64, 3)
    assert np.abs(rgb.astype(int) - (deep[..., ::-1] >> 8)).max() <= 1



# -- bad images -----------------------------------------------------------------------------------
@pytest.mark.parametrize("name", BAD)
def test_bad_image_is_refused_naming_the_file(op, images, name):
    with pytest.raises(OperatorInputError, match=name) as info:
        decode(op, str(images / "bad" / name))
    assert "expected" in str(info.value) or "max_pixels" in str(info.value)


@pytest.mark.parametrize("name", BAD)
def test_bad_bytes_are_refused_naming_their_size(op, images, name):
    data = (images / "bad" / name).read_bytes()
    with pytest.raises(OperatorInputError, match=f"<encoded image, {len(data)} bytes>"):
        decode(op, data)


def test_bomb_refused_fast_without_large_allocation(op, images):
    data = (images / "bad" / "bomb_50000x50000.png").read_bytes()
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(OperatorInputError, match=r"50000x50000.*max_pixels=16,777,216"):
            decode(op, data)
        elapsed = time.perf_counter() - start
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert elapsed < 1.0
    assert peak < 50 * 2**20
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 200 * 2**10


def test_mixed_batch_raises_for_the_bad_item(op, images):
    good = str(images / "good" / "chelsea.jpg")
    with pytest.raises(OperatorInputError, match="truncated.jpg"):
        decode(op, good, str(images / "bad" / "truncated.jpg"), good)


def test_runner_keeps_the_good_items_of_a_mixed_batch(op, images):
    items = [(str(images / "good" / "chelsea.jpg"),), (str(images / "bad" / "corrupted_scan.jpg"),),
             (str(images / "good" / "rocket.webp"),)]
    first, bad, last = process_items(op, items)
    assert first[0].shape == (300, 451, 3) and last[0].shape == (427, 640, 3)
    assert isinstance(bad, OperatorInputError) and "corrupted_scan.jpg" in str(bad)


# -- params ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("cls", OPERATORS, ids=lambda cls: cls.__name__)
def test_max_pixels_is_configurable(cls, images):
    small = cls(max_pixels=200_000, in_process=True)
    small.ensure_setup("cpu")
    with pytest.raises(OperatorInputError, match=r"astronaut.jpg.*512x512.*max_pixels=200,000"):
        decode(small, str(images / "good" / "astronaut.jpg"))
    assert decode(small, str(images / "good" / "chelsea.jpg"))[0].shape == (300, 451, 3)


@pytest.mark.parametrize("cls", OPERATORS, ids=lambda cls: cls.__name__)
@pytest.mark.parametrize("params", [{"max_pixels": 0}, {"max_pixels": "big"}, {"timeout": -1}])
def test_bad_params_are_refused_at_construction(cls, params):
    with pytest.raises(ValueError, match=next(iter(params))):
        cls(**params)


def test_dali_splits_batches_larger_than_its_batch_size(images):
    dali = DaliDecode(batch_size=2, in_process=True)
    dali.ensure_setup("cpu")
    names = sorted(GOOD_SHAPES)[:5]
    out = decode(dali, *[str(images / "good" / n) for n in names])
    assert [a.shape[:2] for a in out] == [GOOD_SHAPES[n] for n in names]


def test_nvjpeg_without_cuda_warns_once_and_uses_cv2(images, caplog):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present: nvjpeg decodes on the GPU")
    nvjpeg = NvJpegDecode(in_process=True)
    with caplog.at_level(logging.WARNING, logger="towhee_rt"):
        nvjpeg.ensure_setup("cpu")
        decode(nvjpeg, str(images / "good" / "chelsea.jpg"))
        decode(nvjpeg, str(images / "good" / "coffee.jpg"))
    messages = [r.getMessage() for r in caplog.records if r.name == "towhee_rt"]
    assert messages == ["image_decode.nvjpeg: no CUDA device, decoding on CPU with cv2"]


def test_jpeg_end_marker_check(images):
    for name in GOOD_SHAPES:
        if name.endswith(".jpg"):
            assert jpeg_has_end((images / "good" / name).read_bytes()), name
    assert not jpeg_has_end((images / "bad" / "truncated.jpg").read_bytes())

