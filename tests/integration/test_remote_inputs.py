"""What ``remote()`` sends, against a real tritonserver: text pipelines get strings as they are,
image pipelines get bytes (local files read, URLs downloaded by the client), and the server's
byte limits are kept by the client before sending.

One server (loopback, free ports, always stopped) serves MiniLM (``text``), a decode-only image
pipeline (``image``) and the same with small limits (``limited``). Downloads come from an
http.server on 127.0.0.1 started here (tests/client_helpers.py).
"""
from __future__ import annotations

import numpy as np
import pytest

import towhee_rt as towhee
from towhee_rt.errors import LimitExceededError

from ..client_helpers import serve_files
from ._served import serve_pipelines

pytestmark = pytest.mark.integration

# chelsea.jpg (35 kB) and chelsea_progressive.jpg (27 kB) fit, rocket (52 kB) and astronaut
# (68 kB) do not; two chelseas do not fit in one request. (The chelseas decode to one shape, so a
# decode-only pipeline can answer them in one response.)
MAX_ITEM = 40_000
MAX_REQUEST = 65_000


def _image_pipe(**limits):
    builder = towhee.dummy_input()
    if limits:
        builder = builder.pipeline_config(**limits)
    return builder.image_decode.cv2_rgb().as_function()


@pytest.fixture(scope="module")
def pipes():
    return {"text": towhee.dummy_input().text_embedding.sentence_transformers().as_function(),
            "image": _image_pipe(),
            "limited": _image_pipe(max_item_bytes=MAX_ITEM, max_request_bytes=MAX_REQUEST)}


@pytest.fixture(scope="module")
def server(pipes, tmp_path_factory):
    with serve_pipelines(pipes, tmp_path_factory.mktemp("inputs") / "repo") as srv:
        yield srv


@pytest.fixture(scope="module")
def site(good_dir):
    with serve_files({f"/{name}": (good_dir / name).read_bytes()
                      for name in ("chelsea.jpg", "astronaut.jpg")}) as web:
        yield web.url


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_text_is_sent_as_text_even_when_a_file_has_that_name(server, pipes, tmp_path,
                                                           monkeypatch, protocol):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "note.txt").write_text("A file whose content must not be embedded.")
    url = server.grpc_url if protocol == "grpc" else server.http_url
    served = towhee.dc(["note.txt", "a photo of a cat"]).remote(
        url=url, protocol=protocol, model_name="text")
    local = pipes["text"](["note.txt", "a photo of a cat"])
    for got, want in zip(served, local):
        assert float(np.max(np.abs(got - want))) <= 1e-5 * float(np.max(np.abs(want)))
    content = pipes["text"]("A file whose content must not be embedded.")
    assert float(np.max(np.abs(served[0] - content))) > 1e-2


def test_image_urls_are_downloaded_by_the_client(server, pipes, site, good_dir):
    with towhee.Client(server.grpc_url, model_name="image") as client:
        assert client.served.kind == "image"
        got = client.infer([f"{site}/chelsea.jpg", f"{site}/missing.jpg"], errors="return")
    np.testing.assert_array_equal(got[0], pipes["image"](str(good_dir / "chelsea.jpg")))
    assert got[1].kind == "bad_input" and got[1].source == f"{site}/missing.jpg"
    assert "HTTP 404" in str(got[1])


def test_limits_are_kept_by_the_client(server, pipes, site, good_dir):
    records = []
    small = [str(good_dir / name) for name in ("chelsea.jpg", "chelsea_progressive.jpg",
                                                        "chelsea.jpg")]
    sizes = [len(open(p, "rb").read()) for p in small]
    assert max(sizes) <= MAX_ITEM and sum(sizes) > MAX_REQUEST  # needs two requests
    items = small + [str(good_dir / "rocket.jpg"), f"{site}/astronaut.jpg"]
    with towhee.Client(server.grpc_url, model_name="limited",
                       on_request=records.append) as client:
        assert (client.served.max_item_bytes, client.served.max_request_bytes) == (
            MAX_ITEM, MAX_REQUEST)
        got = client.infer(items, batch_size=len(items), errors="return")
    for served, path in zip(got[:3], small):
        np.testing.assert_array_equal(served, pipes["limited"](path))
    for error, source in zip(got[3:], items[3:]):
        assert isinstance(error, LimitExceededError) and error.source == source
        assert f"max_item_bytes={MAX_ITEM:,}" in str(error)
        assert "pipeline_config(max_item_bytes=...)" in str(error)
    # Sent: the three small images in two requests under the limit; nothing else, no failure.
    assert [(r.items, r.error) for r in records] == [(2, None), (1, None)]


def test_batch_size_over_the_served_max_batch_size_gives_requests_of_that_size(server, pipes):
    from towhee_rt.op_config import DEFAULT_MAX_BATCH_SIZE

    records = []
    sentences = [f"sentence number {k}" for k in range(DEFAULT_MAX_BATCH_SIZE + 4)]
    with towhee.Client(server.grpc_url, model_name="text", on_request=records.append) as client:
        assert client.max_batch_size == DEFAULT_MAX_BATCH_SIZE  # from the ensemble's config
        got = client.infer(sentences, batch_size=4 * DEFAULT_MAX_BATCH_SIZE)
    # (sent concurrently: in any order)
    assert sorted((r.items, r.error) for r in records) == [(4, None),
                                                           (DEFAULT_MAX_BATCH_SIZE, None)]
    for served, want in zip(got, pipes["text"](sentences)):
        assert float(np.max(np.abs(served - want))) <= 1e-5 * float(np.max(np.abs(want)))
