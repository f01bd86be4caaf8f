"""Where the image decoders read an item from (``backends/image_sources.py``): image data by
default; paths and URLs in process, or where ``allow_paths`` / ``allow_urls`` opt in.

Every decoder reads its items with CV2RGBDecode.load, so every test here runs for each decoder
class. No test names an unbounded source (a device that never ends): a FIFO made in tmp_path
(opened only with O_NONBLOCK by the code, and guarded by a pytest timeout), /dev/null, a
directory and a symlink to a FIFO stand in for them.
"""
from __future__ import annotations

import functools
import http.server
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest

from towhee_rt.backends import image_decode
from towhee_rt.backends.operator_base import (OperatorInputError, OperatorLimitError,
                                              OperatorParamError)
from towhee_rt.backends.image_decode import CV2RGBDecode

from .decode_helpers import OPERATORS, decode, images, op  # noqa: F401 - fixtures
from ..local_http import closed_port, serving  # noqa: F401 - closed_port: a fixture

EACH = pytest.mark.parametrize("cls", OPERATORS, ids=lambda cls: cls.__name__)


@pytest.fixture(scope="module")
def http_server(images):
    """A local http.server on 127.0.0.1 serving the images dir; records the paths asked for in
    ``.seen``; always shut down."""
    handler = functools.partial(_QuietHandler, directory=str(images))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.seen = []
    yield from serving(server)


@pytest.fixture(scope="module")
def http_base(http_server):
    return f"http://127.0.0.1:{http_server.server_address[1]}"


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        self.server.seen.append(self.path)
        try:
            super().do_GET()
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (max_bytes): expected
            pass


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
def root(tmp_path, images) -> Path:
    """An allowed root holding chelsea.jpg, a symlink to it, a symlink out, a FIFO, a symlink to
    the FIFO and a sub-directory; next to the root, outside it, another image."""
    root = tmp_path / "root"
    (root / "sub").mkdir(parents=True)
    shutil.copy(images / "good" / "chelsea.jpg", root / "chelsea.jpg")
    shutil.copy(images / "good" / "rocket.jpg", tmp_path / "outside.jpg")
    (root / "link_in.jpg").symlink_to(root / "chelsea.jpg")
    (root / "link_out.jpg").symlink_to(tmp_path / "outside.jpg")
    os.mkfifo(root / "fifo.jpg")
    (root / "link_fifo.jpg").symlink_to(root / "fifo.jpg")
    return root


# -- in process: paths, file:// and http(s):// URLs are read ----------------------------------
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


# -- policies: data by default, paths and URLs only where allowed -------------------------------
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
    # Read, any of these would give an empty input or an OS error, not "not a recognised image".
    fifo, link = tmp_path / "fifo", tmp_path / "link_to_fifo"
    os.mkfifo(fifo)
    link.symlink_to(fifo)
    op = make(cls)
    for item in (str(fifo).encode(), str(fifo), fifo.as_uri().encode(), str(link).encode(),
                 b"/dev/null", b"file:///dev/null", str(tmp_path).encode()):
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
                     f"{root}/link_fifo.jpg", f"{root}/sub", f"{root}/missing.jpg",
                     f"{root}/sub/../../outside.jpg", "/etc/hostname", "/etc/shadow",
                     "/dev/null", "/nonexistent/x.jpg"):
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
    (tmp_path / "link_to_fifo").symlink_to(tmp_path / "fifo")
    op = make(cls, in_process=True)
    for item in (str(tmp_path / "fifo"), (tmp_path / "fifo").as_uri(),
                 str(tmp_path / "link_to_fifo"), "/dev/null", str(tmp_path)):
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
