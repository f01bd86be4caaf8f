"""A hostile client against a served pipeline: limits, status codes, inputs as data.

One real tritonserver serves a decode-only pipeline (cheap: no model) with small request
limits, and the timm pipeline for the memory check. Requests go through raw tritonclient, as a
hostile client would send them (towhee_rt's own client checks the limits before sending).
"""
import http.server
import os
import shutil
import time

import numpy as np
import pytest

import towhee_rt as towhee
from towhee_rt.backends.wire import decode_failures
from towhee_rt.triton import procs

from ..local_http import serving

pytestmark = pytest.mark.integration

MAX_ITEM = 400_000
MAX_REQUEST = 600_000


class _Images(http.server.BaseHTTPRequestHandler):
    """A small test site on 127.0.0.1: an image, a big body, a slow body, redirects."""

    image = b""

    def do_GET(self):  # noqa: N802 - http.server's name
        routes = {
            "/ok.jpg": lambda: self._send(self.image),
            "/big": lambda: self._send(b"\xff\xd8" + b"0" * 2_000_000),
            "/to-ftp": lambda: self._redirect("ftp://127.0.0.1/x.jpg"),
            "/to-other-host": lambda: self._redirect(
                f"http://localhost:{self.server.server_address[1]}/ok.jpg"),
            "/slow": self._slow,
        }
        routes.get(self.path, lambda: self.send_error(404))()

    def _send(self, body):
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _redirect(self, location):
        self.send_response(302)
        self.send_header("Location", location)
        self.end_headers()

    def _slow(self):  # 1 byte every 0.2 s, at most 40 bytes (the test's deadline is 1 s)
        self.send_response(200)
        self.end_headers()
        try:
            for _ in range(40):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:
            pass

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def site(good_dir):
    _Images.image = (good_dir / "chelsea.jpg").read_bytes()
    for httpd in serving(http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Images)):
        yield f"http://127.0.0.1:{httpd.server_address[1]}"


@pytest.fixture(scope="module")
def allowed_root(tmp_path_factory, good_dir):
    root = tmp_path_factory.mktemp("allowed")
    shutil.copy(good_dir / "chelsea.jpg", root / "chelsea.jpg")
    (root / "big.jpg").write_bytes(b"\xff\xd8" + b"0" * 400_000)
    os.mkfifo(root / "fifo.jpg")
    os.symlink("/etc/hostname", root / "escape.jpg")
    return root


@pytest.fixture(scope="module")
def server(tmp_path_factory, allowed_root):
    repo = tmp_path_factory.mktemp("repo")
    decode = (towhee.dummy_input()
              .pipeline_config(max_item_bytes=MAX_ITEM, max_request_bytes=MAX_REQUEST)
              .image_decode.cv2_rgb().as_function())
    towhee.build_model_repo(decode, repo, model_name="decode", overwrite=True)
    opened = (towhee.dummy_input()
              .image_decode.cv2_rgb(allow_paths=[str(allowed_root)], allow_urls=["127.0.0.1"],
                                    allow_private_networks=True, max_bytes=300_000, timeout=1.0)
              .as_function())
    towhee.build_model_repo(opened, repo, model_name="opened", overwrite=True)
    public_only = towhee.dummy_input().image_decode.cv2_rgb(allow_urls=["127.0.0.1"]) \
        .as_function()
    towhee.build_model_repo(public_only, repo, model_name="public_only", overwrite=True)
    embed = (towhee.dummy_input().image_decode.cv2_rgb()
             .image_embedding.timm(model_name="test_resnet", pretrained=False,
                                   op_config={"instance_count": 1})
             .as_function())
    towhee.build_model_repo(embed, repo, model_name="embed", overwrite=True)
    with towhee.serve(repo, grpc_port=0, http_port=0, metrics_port=0) as srv:
        yield srv


def _infer(srv, protocol, items, model="decode"):
    """Send ``items`` as one request with raw tritonclient; (exception or None, result)."""
    if protocol == "grpc":
        import tritonclient.grpc as module
        client = module.InferenceServerClient(srv.grpc_url)
    else:
        import tritonclient.http as module
        client = module.InferenceServerClient(srv.http_url)
    array = np.empty((len(items), 1), dtype=np.object_)
    for i, item in enumerate(items):
        array[i, 0] = item
    tensor = module.InferInput("image", list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    try:
        return None, client.infer(model, [tensor])
    except Exception as exc:  # noqa: BLE001 - the test inspects it
        return exc, None
    finally:
        client.close()


def _status(protocol, exc):
    return str(exc.status())


INVALID = {"grpc": "StatusCode.INVALID_ARGUMENT", "http": "400"}


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_bad_input_is_invalid_argument_and_names_operator_and_item(server, good_dir, protocol):
    good = (good_dir / "chelsea.jpg").read_bytes()
    exc, _ = _infer(server, protocol, [good, b"not an image at all"])
    assert _status(protocol, exc) == INVALID[protocol], str(exc)
    (failure,) = decode_failures(str(exc))
    assert (failure.index, failure.operator, failure.kind) == (1, "image_decode.cv2_rgb",
                                                               "bad_input")
    assert "not a recognised image" in failure.message
    assert server.models_ready()


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_oversized_item_and_request_are_refused_before_decoding(server, good_dir, protocol):
    good = (good_dir / "chelsea.jpg").read_bytes()
    big = b"\xff\xd8" + os.urandom(MAX_ITEM)  # over the item limit
    exc, _ = _infer(server, protocol, [good, big])
    assert _status(protocol, exc) == INVALID[protocol]
    (failure,) = decode_failures(str(exc))
    assert failure.index == 1 and failure.kind == "limit"
    assert f"more than max_item_bytes={MAX_ITEM}" in failure.message
    assert "pipeline_config(max_item_bytes=...)" in failure.message

    under_each = [os.urandom(MAX_ITEM - 10) for _ in range(2)]  # together over the request
    exc, _ = _infer(server, protocol, under_each)
    failures = decode_failures(str(exc))
    assert [f.index for f in failures] == [0, 1] and {f.kind for f in failures} == {"limit"}
    assert f"more than max_request_bytes={MAX_REQUEST}" in failures[0].message
    assert server.models_ready()


def _failure(srv, item, model="decode"):
    exc, result = _infer(srv, "grpc", [item], model)
    assert exc is not None, f"{item!r} was served: {result.get_response()}"
    (failure,) = decode_failures(str(exc))
    return failure


def test_server_side_paths_are_data_and_reveal_nothing(server, good_dir):
    existing = str(good_dir / "chelsea.jpg").encode()
    messages = {_failure(server, item).message for item in [
        existing, b"/etc/shadow", b"/no/such/file.jpg", b"file://" + existing,
        b"file:///etc/passwd"]}
    # Never opened: one and the same answer, whether the path exists or is secret.
    assert len(messages) == 1 and "not a recognised image" in messages.pop()
    assert server.models_ready()


def test_urls_are_not_fetched_by_default(server, site):
    answers = {_failure(server, url.encode()).message
               for url in [f"{site}/ok.jpg", "http://127.0.0.1:1/x.jpg", "http://169.254.169.254/"]}
    assert len(answers) == 1  # no fetch, so no port-scan oracle either


def test_an_allowed_host_on_a_private_address_is_refused_without_an_oracle(server, site):
    # allow_urls names the host, but 127.0.0.1 is loopback: refused unless
    # allow_private_networks, the same answer whether a server listens or not.
    listening = _failure(server, f"{site}/ok.jpg".encode(), "public_only")
    closed = _failure(server, b"http://127.0.0.1:1/ok.jpg", "public_only")
    assert listening.message == closed.message and listening.kind == "bad_input"


@pytest.mark.timeout(60)
def test_allowed_roots_are_read_safely(server, allowed_root, good_dir):
    exc, result = _infer(server, "grpc", [str(allowed_root / "chelsea.jpg").encode()], "opened")
    assert exc is None and result.as_numpy("image_output").shape[1:] == (300, 451, 3)
    refusals = {item: _failure(server, str(item).encode(), "opened").message for item in [
        allowed_root / "fifo.jpg",            # a FIFO: refused without blocking
        allowed_root / "escape.jpg",          # a symlink out of the root
        allowed_root / ".." / "x.jpg",        # ../ out of the root
        allowed_root / "missing.jpg",
        good_dir / "chelsea.jpg",             # exists, but outside the roots
    ]}
    assert len(set(refusals.values())) == 1, refusals  # no existence oracle
    big = _failure(server, str(allowed_root / "big.jpg").encode(), "opened")
    assert big.kind == "limit" and "max_bytes" in big.message, big
    assert server.models_ready()


@pytest.mark.timeout(60)
def test_allowed_urls_are_fetched_under_the_rules(server, site):
    exc, result = _infer(server, "grpc", [f"{site}/ok.jpg".encode()], "opened")
    assert exc is None and result.as_numpy("image_output").shape[1:] == (300, 451, 3)
    assert _failure(server, f"{site}/big".encode(), "opened").kind == "limit"
    for path in ("/to-ftp", "/to-other-host"):
        assert "redirect" in _failure(server, f"{site}{path}".encode(), "opened").message
    start = time.monotonic()
    slow = _failure(server, f"{site}/slow".encode(), "opened")
    assert time.monotonic() - start < 4 and "timeout" in slow.message
    assert server.models_ready()


def _memory_mib(pid):
    """(anonymous RSS, largest shared RSS) in MiB over tritonserver and its stubs."""
    resident = [procs.resident_kib(member.pid) for member in procs.group_members(pid)]
    return (sum(anon for anon, _ in resident) // 1024,
            max((shared for _, shared in resident), default=0) // 1024)


def test_memory_comes_back_after_the_largest_image(server, good_dir):
    import io

    from PIL import Image

    client = towhee.Client(server.grpc_url, model_name="embed")
    client.infer([str(good_dir / "chelsea.jpg")])
    anon_before, _ = _memory_mib(server.pid)
    largest = io.BytesIO()
    Image.new("RGB", (4096, 4096), (120, 30, 200)).save(largest, "PNG")  # 58 KB, 48 MiB RGB
    too_large = io.BytesIO()
    Image.new("RGB", (4097, 4096), (120, 30, 200)).save(too_large, "PNG")
    results = client.infer([largest.getvalue(), too_large.getvalue()], errors="return")
    assert results[0].shape == (96,)  # test_resnet's features
    assert isinstance(results[1], towhee.LimitExceededError)
    assert "more than max_pixels=16,777,216" in str(results[1])
    client.infer([str(good_dir / "chelsea.jpg")])
    anon_after, shared = _memory_mib(server.pid)
    client.close()
    # Heap memory is given back; the stubs' shared-memory pools keep their largest size, which
    # max_pixels bounds (one 48 MiB image plus the pool's growth step).
    assert anon_after - anon_before < 100, (anon_before, anon_after)
    assert shared < 160, shared
