"""Image decode operators against the shared test images (good and bad).

Every test runs for each decoder class: ``image_decode.cv2_rgb`` and, on a machine without
CUDA, the CPU paths of ``image_decode.nvjpeg`` (OpenCV fallback) and ``image_decode.dali``.
"""
from __future__ import annotations

import functools
import http.server
import io
import logging
import os
import resource
import shutil
import socket
import threading
import time
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from towhee_rt.backends import image_decode
from towhee_rt.backends._operator import (OperatorInputError, OperatorLimitError,
                                          OperatorParamError, process_items)
from towhee_rt.backends.image_decode import CV2RGBDecode
from towhee_rt.backends.image_decode_gpu import DaliDecode, NvJpegDecode, jpeg_has_end

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


@pytest.fixture(scope="module")
def http_server(images):
    """A local http.server on 127.0.0.1 serving the images dir; records the paths asked for in
    ``.seen``; always shut down."""
    handler = functools.partial(_QuietHandler, directory=str(images))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.seen = []
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture(scope="module")
def http_base(http_server):
    return f"http://127.0.0.1:{http_server.server_address[1]}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        self.server.seen.append(self.path)
        super().do_GET()


def decode(op, *items):
    return op.process_batch({"image": list(items)})["image"]


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


# -- sources --------------------------------------------------------------------------------------
def test_path_url_and_bytes_give_identical_arrays(op, images, http_base):
    path = images / "good" / "rocket.jpg"
    items = [str(path), path, path.as_uri(), str(path).encode(), path.as_uri().encode(),
             path.read_bytes(), f"{http_base}/good/rocket.jpg",
             f"{http_base}/good/rocket.jpg".encode()]
    out = decode(op, *items)
    for arr in out[1:]:
        assert np.array_equal(arr, out[0])


def test_http_error_names_the_url(op, http_base):
    url = f"{http_base}/good/missing.jpg"
    with pytest.raises(OperatorInputError, match="missing.jpg.*HTTP 404"):
        decode(op, url)


def test_missing_file_names_the_path(op, tmp_path):
    missing = tmp_path / "nope.jpg"
    with pytest.raises(OperatorInputError, match="nope.jpg.*cannot read"):
        decode(op, str(missing))
    with pytest.raises(OperatorInputError, match="nope.jpg"):
        decode(op, missing.as_uri().encode())


def test_binary_bytes_starting_with_slash_are_data_not_a_path(op):
    with pytest.raises(OperatorInputError, match=r"<encoded image, 11 bytes>: not a recognised"):
        decode(op, b"/" + b"\x00" * 10)


def test_unsupported_item_type_is_refused(op):
    with pytest.raises(OperatorInputError, match="expected encoded image bytes"):
        decode(op, 3.5)


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


# -- where items are read from: data by default, paths and URLs only where allowed --------------
#: Every decoder reads its items with CV2RGBDecode.load, so every test here runs for each.
EACH = pytest.mark.parametrize("cls", OPERATORS, ids=lambda cls: cls.__name__)


def make(cls, **params):
    decoder = cls(**params)
    decoder.ensure_setup("cpu")
    return decoder


def refusal(op, item) -> OperatorInputError:
    """The error ``op`` raises for ``item`` (it must raise one)."""
    with pytest.raises(OperatorInputError) as info:
        decode(op, item)
    return info.value


@pytest.fixture()
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def root(tmp_path, images) -> Path:
    """An allowed root holding chelsea.jpg, a symlink to it, a symlink out, a FIFO and a
    sub-directory; next to the root, outside it, another image."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    shutil.copy(images / "good" / "chelsea.jpg", root / "chelsea.jpg")
    shutil.copy(images / "good" / "rocket.jpg", tmp_path / "outside.jpg")
    (root / "link_in.jpg").symlink_to(root / "chelsea.jpg")
    (root / "link_out.jpg").symlink_to(tmp_path / "outside.jpg")
    os.mkfifo(root / "fifo.jpg")
    return root


@EACH
def test_served_decoder_takes_a_path_as_data_whether_or_not_it_exists(cls, images, tmp_path):
    real, missing = tmp_path / "a.jpg", tmp_path / "b.jpg"  # same length: same error text
    shutil.copy(images / "good" / "chelsea.jpg", real)
    op = make(cls)
    pairs = [(str(real), str(missing)), (str(real).encode(), str(missing).encode()),
             (real.as_uri().encode(), missing.as_uri().encode()),
             (b"/etc/hostname", b"/etc/hostnamX")]
    for existing, absent in pairs:
        assert str(refusal(op, existing)) == str(refusal(op, absent))
    error = refusal(op, str(real).encode())
    assert error.source == f"<encoded image, {len(str(real))} bytes>"
    assert error.message.startswith("not a recognised image")
    assert "allow_paths" in error.message and not isinstance(error, OperatorLimitError)


@pytest.mark.timeout(10)
@EACH
def test_served_decoder_never_opens_a_fifo_or_a_device(cls, tmp_path):
    os.mkfifo(tmp_path / "fifo")
    op = make(cls)
    for item in (str(tmp_path / "fifo").encode(), str(tmp_path / "fifo"), b"/dev/zero",
                 b"file:///dev/zero", b"/dev/stdin"):
        assert "not a recognised image" in refusal(op, item).message


@EACH
def test_served_decoder_never_fetches_a_url(cls, http_server, http_base, tmp_path):
    before = len(http_server.seen)
    url = f"{http_base}/good/rocket.jpg"
    for op in (make(cls), make(cls, allow_paths=[str(tmp_path)])):
        for item in (url, url.encode()):
            error = refusal(op, item)
            assert error.message.startswith("not a recognised image") and "allow_urls" in \
                error.message
    assert len(http_server.seen) == before


@EACH
def test_allow_urls_refuses_loopback_without_a_port_oracle(cls, http_server, http_base,
                                                         closed_port):
    before = len(http_server.seen)
    op = make(cls, allow_urls=["127.0.0.1"])
    messages = [refusal(op, f"{base}/good/rocket.jpg".encode()).message
                for base in (http_base, f"http://127.0.0.1:{closed_port}")]
    assert messages[0] == messages[1]
    assert "does not resolve to a public address" in messages[0]
    assert "allow_private_networks=True" in messages[0]
    assert len(http_server.seen) == before


@EACH
def test_allow_urls_with_private_networks_fetches_from_the_allowed_hosts(cls, images,
                                                                         http_base):
    op = make(cls, allow_urls=["127.0.0.1"], allow_private_networks=True)
    url = f"{http_base}/good/rocket.jpg"
    (fetched,) = decode(op, url.encode())
    (sent,) = decode(op, (images / "good" / "rocket.jpg").read_bytes())
    assert np.array_equal(fetched, sent)
    port = http_base.rsplit(":", 1)[1]
    assert "'localhost' is not allowed" in refusal(op, f"http://localhost:{port}/x.jpg").message


@EACH
def test_a_url_over_max_bytes_is_refused(cls, http_base, images):
    op = make(cls, in_process=True, max_bytes=10_000)
    url = f"{http_base}/good/coffee_1920x1280.jpg"
    with pytest.raises(OperatorLimitError, match=r"coffee_1920x1280.jpg: the response is larger "
                                                 r"than max_bytes=10,000.*operator param "
                                                 r"max_bytes"):
        decode(op, url)


@pytest.mark.timeout(10)
@EACH
def test_allow_paths_reads_regular_files_under_the_roots_only(cls, root):
    link_to_root = root.parent / "root_link"
    link_to_root.symlink_to(root)
    for allowed in (root, link_to_root):  # a root is compared after realpath too
        op = make(cls, allow_paths=[str(allowed)])
        inside = root / "chelsea.jpg"
        for item in (str(inside), str(inside).encode(), inside.as_uri().encode(),
                     str(root / "link_in.jpg"), str(root / "sub" / ".." / "chelsea.jpg"),
                     str(link_to_root / "chelsea.jpg")):
            assert decode(op, item)[0].shape == (300, 451, 3), item
        messages = set()
        for item in (f"{root}/../outside.jpg", f"{root}/link_out.jpg", f"{root}/fifo.jpg",
                     f"{root}/sub", f"{root}/missing.jpg", f"{root}/sub/../../outside.jpg",
                     "/etc/hostname", "/etc/shadow", "/dev/zero", "/nonexistent/x.jpg"):
            start = time.monotonic()
            error = refusal(op, item.encode())
            assert time.monotonic() - start < 1, item  # the FIFO is not waited on
            assert error.source == item and not isinstance(error, OperatorLimitError)
            messages.add(error.message)
        assert len(messages) == 1, messages  # nothing tells which of these exist
        assert "not a readable regular file under the allowed roots" in messages.pop()


@EACH
def test_allow_paths_caps_the_file_size(cls, root):
    op = make(cls, allow_paths=[str(root)], max_bytes=1000)
    with pytest.raises(OperatorLimitError, match=r"chelsea.jpg: the file has [\d,]+ bytes, more "
                                                 r"than max_bytes=1,000; raise the operator "
                                                 r"param max_bytes"):
        decode(op, str(root / "chelsea.jpg").encode())


@pytest.mark.timeout(10)
@EACH
def test_in_process_refuses_fifos_devices_and_directories_quickly(cls, tmp_path):
    os.mkfifo(tmp_path / "fifo")
    op = make(cls, in_process=True)
    for item in (str(tmp_path / "fifo"), (tmp_path / "fifo").as_uri(), "/dev/zero",
                 str(tmp_path)):
        assert "not a regular file" in refusal(op, item).message
    assert "No such file or directory" in refusal(op, str(tmp_path / "nope.jpg")).message


@EACH
def test_in_process_caps_files_and_bytes_alike(cls, images):
    op = make(cls, in_process=True, max_bytes=10_000)
    path = images / "good" / "chelsea.jpg"
    with pytest.raises(OperatorLimitError, match=r"chelsea.jpg: the file has [\d,]+ bytes, more "
                                                 r"than max_bytes=10,000"):
        decode(op, str(path))
    with pytest.raises(OperatorLimitError, match=r"<encoded image, \d+ bytes>: [\d,]+ bytes, "
                                                 r"more than max_bytes=10,000; raise the "
                                                 r"operator param max_bytes"):
        decode(op, path.read_bytes())


@EACH
def test_bytes_over_max_bytes_are_refused_before_any_decoding(cls, images, monkeypatch):
    def no_header(*args):
        raise AssertionError("read_header called for data over max_bytes")

    op = make(cls, max_bytes=10_000)
    monkeypatch.setattr(image_decode, "read_header", no_header)
    with pytest.raises(OperatorLimitError, match="max_bytes=10,000"):
        decode(op, (images / "good" / "chelsea.jpg").read_bytes())


@EACH
def test_the_gpu_decoders_read_with_the_same_policy(cls, tmp_path):
    params = dict(max_bytes=1234, timeout=2.5, allow_paths=[str(tmp_path)],
                  allow_urls=["*.example.com"], allow_private_networks=True, in_process=True)
    op = cls(**params)
    reader = op if cls is CV2RGBDecode else op._cpu
    assert reader.policy == CV2RGBDecode(**params).policy
    assert reader.policy.in_process and reader.policy.max_bytes == 1234


@EACH
@pytest.mark.parametrize("params, fragment", [
    ({"allow_paths": ["relative/images"]}, "absolute directory paths"),
    ({"allow_paths": "/srv/images"}, "must be list"),
    ({"allow_urls": ["https://images.example.com/"]}, "hosts, not URLs"),
    ({"allow_urls": [""]}, "hosts, not URLs"),
    ({"max_bytes": 0}, "must be positive"),
    ({"allow_private_networks": "yes"}, "must be bool"),
])
def test_bad_source_params_are_refused(cls, params, fragment):
    with pytest.raises(OperatorParamError, match=rf"param '{next(iter(params))}' .*{fragment}"):
        cls(**params)


@EACH
def test_in_process_is_set_by_towhee_rt_only(cls):
    with pytest.raises(OperatorParamError, match="set by towhee_rt itself 'in_process'") as info:
        cls.check_params({"in_process": True})
    assert "max_bytes (int, default 33554432)" in str(info.value)
    assert "in_process (" not in str(info.value)
