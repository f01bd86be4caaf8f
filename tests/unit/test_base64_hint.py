"""backends/base64_hint.py: a base64-encoded image is told apart from an image's bytes."""
from __future__ import annotations

import base64
import io
import json
import time

import numpy as np
import pytest
from PIL import Image

from towhee_rt.backends.base64_hint import looks_like_base64_image

from ..conftest import BAD_FILES, GOOD_SHAPES, IMAGES


def _pil_bytes(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((8, 8, 3), 100, np.uint8)).save(buffer, format=fmt)
    return buffer.getvalue()


def _images():
    files = {name: (IMAGES / "good" / name).read_bytes() for name in GOOD_SHAPES}
    files.update({f"made.{fmt.lower()}": _pil_bytes(fmt) for fmt in ("GIF", "BMP", "TIFF")})
    return files


IMAGE_BYTES = _images()


@pytest.mark.parametrize("name", sorted(IMAGE_BYTES))
def test_base64_of_every_image_format_is_recognised_in_every_spelling(name):
    raw = IMAGE_BYTES[name]
    text = base64.b64encode(raw)
    assert looks_like_base64_image(text)
    assert looks_like_base64_image(base64.encodebytes(raw))  # wrapped at 76 columns
    assert looks_like_base64_image(base64.urlsafe_b64encode(raw))
    assert looks_like_base64_image(json.dumps(text.decode()).encode())  # with its JSON quotes
    assert looks_like_base64_image(b"  \n" + text)
    assert looks_like_base64_image(text.decode())  # a str as well


@pytest.mark.parametrize("name", sorted(IMAGE_BYTES))
def test_the_raw_bytes_of_an_image_are_not_base64(name):
    assert not looks_like_base64_image(IMAGE_BYTES[name])


@pytest.mark.parametrize("name", BAD_FILES)
def test_the_bad_files_are_not_base64_images(name):
    assert not looks_like_base64_image((IMAGES / "bad" / name).read_bytes())


@pytest.mark.parametrize("data", [
    b"", b"/9j/", b"a photo of a cat", b"word " * 300,
    base64.b64encode(b"just some text, long enough to decode " * 4),
    base64.b64encode(bytes(range(256))),
    b"QkFTRTY0IGJ1dCBub3QgYSBibXAgZmlsZQ==",  # base64 of "BASE64 but not a bmp file"
    "naïve café, 東京".encode(), None, 42, ["/9j/"],
])
def test_other_input_is_not(data):
    assert not looks_like_base64_image(data)


@pytest.mark.parametrize("url", [b"data:image/png;base64,iVBORw0KGgo=",
                                 b"DATA:image/jpeg;base64,/9j/4AAQ", b'"data:image/webp;base64,'])
def test_data_urls_are(url):
    assert looks_like_base64_image(url)


def test_a_truncated_base64_image_is_still_recognised_from_its_start():
    text = base64.b64encode(IMAGE_BYTES["chelsea.jpg"])[:40]
    assert looks_like_base64_image(text)


def test_it_reads_only_the_start_of_large_input():
    big = base64.b64encode(IMAGE_BYTES["coffee_1920x1280.jpg"]) * 40  # ~20 MB
    start = time.perf_counter()
    for _ in range(100):
        assert looks_like_base64_image(big)
        assert not looks_like_base64_image(memoryview(big)[3:])
    assert (time.perf_counter() - start) / 200 < 0.002
