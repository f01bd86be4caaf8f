"""What towhee_rt's client sends (no Triton server here): items by the served pipeline's input
kind, the server's byte limits checked before sending, batches split under the request limit,
URLs downloaded by the client, keys and headers spelled per protocol, refusals explained.

Downloads go to an http.server on 127.0.0.1 started by the tests (tests/client_helpers.py:
bounded bodies, stopped at the end of the module).
"""
from __future__ import annotations

import numpy as np
import pytest

from towhee_rt.backends.operator_base import OperatorInputError, OperatorLimitError
from towhee_rt.client.failures import refusal_error
from towhee_rt.client.inputs import ServedInput, encode_item, request_headers, split_by_bytes
from towhee_rt.errors import BadInputError, ClientError, ConfigError, LimitExceededError

from ..client_helpers import offline_client, serve_files

IMAGE = ServedInput("image", max_request_bytes=1000, max_item_bytes=400)
TEXT = ServedInput("text", max_request_bytes=1000, max_item_bytes=400)
LEGACY = ServedInput()


# ------------------------------------------------------------------------ server parameters
def test_served_input_reads_the_ensemble_parameters():
    served = ServedInput.from_parameters({"towhee_input_kind": "text",
                                          "towhee_max_request_bytes": "67108864",
                                          "towhee_max_item_bytes": "16777216",
                                          "towhee_format": "onnx"})
    assert served == ServedInput("text", 67108864, 16777216)
    assert ServedInput.from_parameters({}) == LEGACY  # older repositories say nothing
    assert ServedInput.from_parameters({"towhee_max_item_bytes": "junk"}).max_item_bytes is None


# ----------------------------------------------------------------------------- text inputs
def test_text_pipelines_send_strings_even_when_a_file_has_that_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "note.txt").write_text("the file's content, not the text")
    assert encode_item("note.txt", TEXT) == b"note.txt"
    assert encode_item("naïve café", TEXT) == "naïve café".encode()
    assert encode_item(b"raw", TEXT) == b"raw"
    assert encode_item(np.array("numpy str"), TEXT) == b"numpy str"
    # Repositories without an input kind keep the old behaviour: a local file's bytes.
    assert encode_item("note.txt", LEGACY) == b"the file's content, not the text"


def test_text_pipelines_take_text_only_like_the_local_pipeline(tmp_path):
    with pytest.raises(OperatorInputError, match="expected text as str or UTF-8 bytes, got "
                                                 "PosixPath"):
        encode_item(tmp_path / "note.txt", TEXT)


# ---------------------------------------------------------------------------- image inputs
def test_image_pipelines_read_local_files_and_refuse_other_strings(tmp_path):
    image = tmp_path / "a.jpg"
    image.write_bytes(b"\xff\xd8jpeg")
    assert encode_item(str(image), IMAGE) == b"\xff\xd8jpeg"
    assert encode_item(image, IMAGE) == b"\xff\xd8jpeg"
    assert encode_item(f"file://{image}", IMAGE) == b"\xff\xd8jpeg"
    for value in ("missing.jpg", "s3://bucket/a.jpg", str(tmp_path)):
        with pytest.raises(OperatorInputError, match="no such local file, and not an http"):
            encode_item(value, IMAGE)
    with pytest.raises(OperatorInputError, match="no such local file"):
        encode_item(12, IMAGE)


def test_items_over_the_item_limit_are_refused_before_reading(tmp_path):
    big = tmp_path / "big.jpg"
    big.write_bytes(b"x" * 401)
    with pytest.raises(OperatorLimitError) as info:
        encode_item(str(big), IMAGE)
    message = str(info.value)
    assert "401 bytes, more than the server's max_item_bytes=400" in message
    assert "pipeline_config(max_item_bytes=...)" in message and "not sent" in message
    with pytest.raises(OperatorLimitError, match="max_item_bytes=400"):
        encode_item(b"x" * 401, IMAGE)
    with pytest.raises(OperatorLimitError, match="max_item_bytes=400"):
        encode_item("t" * 401, TEXT)
    only_request = ServedInput("image", max_request_bytes=300)
    with pytest.raises(OperatorLimitError, match=r"max_request_bytes=300 for a whole request.*"
                                                 r"pipeline_config\(max_request_bytes=\.\.\.\)"):
        encode_item(b"x" * 301, only_request)
    assert encode_item(b"x" * 400, IMAGE) == b"x" * 400


def test_split_by_bytes_keeps_order_and_stays_under_the_limit():
    assert split_by_bytes([300, 300, 300, 300], 1000) == [[0, 1, 2], [3]]
    assert split_by_bytes([600, 600, 100], 1000) == [[0], [1, 2]]
    assert split_by_bytes([1200, 10], 1000) == [[0], [1]]  # over alone: its own request
    assert split_by_bytes([5, 5, 5], None) == [[0, 1, 2]]
    assert split_by_bytes([], 1000) == []


# --------------------------------------------------------------------- URLs, downloaded here
@pytest.fixture(scope="module")
def web():
    with serve_files({"/small.jpg": b"\xff\xd8small", "/big.jpg": b"x" * 5000}) as site:
        yield site


def test_image_pipelines_download_urls_themselves(web):
    base = web.url
    # Loopback is the user's own machine: the client allows private addresses.
    assert encode_item(f"{base}/small.jpg", IMAGE) == b"\xff\xd8small"
    with pytest.raises(OperatorLimitError) as info:
        encode_item(f"{base}/big.jpg", IMAGE)
    assert "larger than the server's max_item_bytes=400" in str(info.value)
    assert "pipeline_config(max_item_bytes=...)" in str(info.value)
    with pytest.raises(OperatorInputError, match="HTTP 404"):
        encode_item(f"{base}/missing.jpg", IMAGE)
    # Older repositories: the URL itself is sent, as before.
    seen = len(web.seen)
    assert encode_item(f"{base}/small.jpg", LEGACY) == f"{base}/small.jpg".encode()
    assert len(web.seen) == seen


# --------------------------------------------------------- one client, no server behind it
def test_batches_are_split_under_the_request_limit_and_results_keep_their_order(tmp_path):
    client = offline_client(IMAGE)
    items = [b"a" * 300, b"b" * 300, b"c" * 300, b"d" * 300, b"e" * 50]
    results = client.infer(items, batch_size=5)
    assert results == [300, 300, 300, 300, 50]
    sent = client._transport.payloads
    assert [sum(map(len, r)) for r in sent] == [900, 350]
    assert all(sum(map(len, r)) <= IMAGE.max_request_bytes for r in sent)
    # Each request is sent with what is left of the client's timeout (5 s), for the server too.
    assert all(4.0 < t <= 5.0 for t in client._transport.timeouts)


def test_over_limit_and_unreadable_items_fail_alone_without_being_sent(tmp_path):
    client = offline_client(IMAGE)
    big = tmp_path / "big.jpg"
    big.write_bytes(b"x" * 401)
    items = [b"ok1", str(big), "missing.jpg", b"ok2"]
    results = client.infer(items, batch_size=4, errors="return")
    assert results[0] == 3 and results[3] == 3
    assert client._transport.payloads == [[b"ok1", b"ok2"]]
    assert isinstance(results[1], LimitExceededError) and results[1].kind == "limit"
    assert results[1].index == 1 and results[1].operator is None
    assert results[1].source == str(big)
    assert str(results[1]).startswith(f"item 1: request: {big}: the item carries 401 bytes")
    assert isinstance(results[2], BadInputError) and results[2].source == "missing.jpg"


def test_text_errors_do_not_name_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "note.txt").write_text("x")
    client = offline_client(TEXT)
    results = client.infer(["note.txt", "t" * 401], errors="return")
    assert results[0] == len("note.txt")
    assert isinstance(results[1], LimitExceededError) and results[1].source is None


# --------------------------------------------------------------------------- keys, headers
def test_keys_and_headers_are_spelled_for_each_protocol():
    assert request_headers("http", "k1", {"X-Trace": "t"}) == {"X-Trace": "t",
                                                               "towhee-api-key": "k1"}
    assert request_headers("grpc", "k1", {"X-Trace": "t"}) == {
        "x-trace": "t", "triton-grpc-protocol-towhee-api-key": "k1"}
    assert request_headers("grpc") == {}
    with pytest.raises(ConfigError, match="headers must map names to string values"):
        request_headers("http", None, {"x": 1})


@pytest.mark.parametrize("protocol, text", [
    ("http", "[403] This API is restricted, expecting header 'towhee-api-key'"),
    ("grpc", "[StatusCode.UNAVAILABLE] This protocol is restricted, expecting header "
             "'triton-grpc-protocol-towhee-api-key'"),
])
def test_a_refused_key_is_one_client_error_that_says_what_to_do(protocol, text):
    def refusal(text, key_sent=False):
        return refusal_error(text, "127.0.0.1:1", protocol, key_sent)

    missing = refusal(text)
    assert isinstance(missing, ClientError)
    assert "requires an API key" in str(missing) and "none was sent" in str(missing)
    assert "api_key=..." in str(missing) and "--api-key-file" in str(missing)
    wrong = refusal(text, key_sent=True)
    assert "refused the API key this client sent" in str(wrong)
    other = refusal(text.replace("towhee-api-key", "x-team"))
    assert "headers={" in str(other) and "x-team" in str(other)
    assert refusal("item 0: bad input") is None


@pytest.mark.parametrize("concurrency", [1, 3])
def test_a_refusal_at_inference_stops_the_whole_call(concurrency):
    from tritonclient.utils import InferenceServerException

    sent = []

    def refuse(url, payloads, timeout=None):
        sent.append(payloads)
        raise InferenceServerException("This API is restricted, expecting header "
                                       "'towhee-api-key'", status="403")

    client = offline_client(IMAGE, "http", answer=refuse)
    with pytest.raises(ClientError, match="requires an API key"):
        client.infer([b"a", b"b", b"c"], errors="return", concurrency=concurrency)
    # one error for the call, not one per item; one at a time, the rest is not sent
    assert len(sent) == 1 if concurrency == 1 else len(sent) <= 3
