"""The gateway's pure parts: request parsing and image decoding, the error mapping, response
bodies, size-limited body reading, and the lazy imports (no server here; see
tests/integration/test_openai_gateway.py for the served path)."""
from __future__ import annotations

import asyncio
import base64
import subprocess
import sys

import numpy as np
import pytest

from towhee_rt.errors import (BadInputError, ClientError, DeadlineExceededError, ItemError,
                              LimitExceededError, ServerBusyError, ServerUnavailableError)
from towhee_rt.gateway.body import check_content_length, parse_json, read_limited
from towhee_rt.gateway.errors import GatewayError, from_exception, from_item_errors
from towhee_rt.gateway.inputs import decode_image_item, parse_embedding_request
from towhee_rt.gateway.responses import count_usage, embeddings_body, encode_embedding

PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(64))
PNG_B64 = base64.b64encode(PNG).decode()


def _parse(body, kind="text", **kwargs):
    return parse_embedding_request(body, model_name="m", input_kind=kind, **kwargs)


def _refused(body, status=400, **kwargs) -> GatewayError:
    with pytest.raises(GatewayError) as caught:
        _parse(body, **kwargs)
    assert caught.value.status == status
    return caught.value


def test_text_input_string_or_list():
    assert _parse({"model": "m", "input": "hi"}).items == ["hi"]
    req = _parse({"model": "m", "input": ["a", "b c"], "encoding_format": "base64",
                  "user": "someone"})
    assert req.items == ["a", "b c"] and req.encoding_format == "base64"
    assert _parse({"model": "m", "input": "x", "encoding_format": None}).encoding_format == \
        "float"


@pytest.mark.parametrize("body, param, said", [
    ({"input": "x"}, "model", "'model' must be"),
    ({"model": "m"}, "input", "'input' is required"),
    ({"model": "m", "input": []}, "input", "empty list"),
    ({"model": "m", "input": {"a": 1}}, "input", "got an object"),
    ({"model": "m", "input": ["ok", 3]}, "input", "input[1]: expected a string, got a number"),
    ({"model": "m", "input": [[1, 2]]}, "input", "token arrays are not accepted"),
    ({"model": "m", "input": ["\ud800"]}, "input", "lone surrogate"),
    ({"model": "m", "input": "x", "encoding_format": "int8"}, "encoding_format", "'float'"),
    ({"model": "m", "input": "x", "dimensions": 64}, "dimensions", "not supported"),
])
def test_bad_requests_name_the_field_and_item(body, param, said):
    error = _refused(body)
    assert error.param == param and said in error.message
    assert error.body() == {"error": {"message": error.message, "type": "invalid_request_error",
                                      "param": param, "code": error.code}}


def test_unknown_model_is_404_naming_the_served_one():
    error = _refused({"model": "gpt", "input": "x"}, status=404)
    assert error.code == "model_not_found" and "'m'" in error.message


def test_item_count_and_item_bytes_limits():
    error = _refused({"model": "m", "input": ["a"] * 3}, max_items=2)
    assert error.code == "too_many_inputs"
    error = _refused({"model": "m", "input": ["ok", "é" * 6]}, status=413, max_item_bytes=10)
    assert error.message.startswith("input[1]:") and "12 bytes" in error.message
    assert _parse({"model": "m", "input": "é" * 5}, max_item_bytes=10).items == ["é" * 5]


def test_dimensions_accepted_only_when_the_pipeline_supports_that_size():
    assert _parse({"model": "m", "input": "x", "dimensions": 384}, dimensions=384).items
    assert "must be 384" in _refused({"model": "m", "input": "x", "dimensions": 64},
                                     dimensions=384).message


def test_images_from_data_urls_or_bare_base64_become_bytes():
    req = _parse({"model": "m", "input": [f"data:image/png;base64,{PNG_B64}", PNG_B64,
                                          f"DATA:image/png;name=a.png;base64,{PNG_B64}",
                                          PNG_B64[:20] + "\n" + PNG_B64[20:]]}, kind="image")
    assert req.items == [PNG] * 4
    jpeg_like = base64.b64encode(b"\xff\xd8\xff\xe0 jpeg").decode()
    assert jpeg_like.startswith("/9j/")  # bare JPEG base64 starts like a path: still decoded
    assert decode_image_item(0, jpeg_like) == b"\xff\xd8\xff\xe0 jpeg"


@pytest.mark.parametrize("value, said", [
    ("https://example.com/a.jpg", "does not fetch URLs"),
    ("file:///etc/passwd", "does not fetch URLs"),
    ("/etc/passwd", "not valid base64"),
    ("data:image/png,rawbytes", "a data URL that is not base64"),
    ("data:image/png;base64,!!!!", "not valid base64"),
    ("", "decodes to 0 bytes"),
    (b"bytes".decode(), "not valid base64"),
    (None, "got null"),
])
def test_image_items_that_are_not_base64_images(value, said):
    with pytest.raises(GatewayError) as caught:
        decode_image_item(2, value)
    assert caught.value.status == 400 and caught.value.message.startswith(
        "input[2]: expected a base64-encoded image") and said in caught.value.message


def test_image_over_max_item_bytes_is_413_before_decoding():
    huge = "A" * 4_000_000  # 3,000,000 bytes once decoded
    with pytest.raises(GatewayError) as caught:
        decode_image_item(0, huge, max_item_bytes=1000)
    assert caught.value.status == 413 and "max_item_bytes=1,000" in caught.value.message
    with pytest.raises(GatewayError):
        decode_image_item(0, PNG_B64, max_item_bytes=len(PNG) - 1)
    assert decode_image_item(0, PNG_B64, max_item_bytes=len(PNG)) == PNG


def test_item_errors_map_to_statuses_caller_fault_first():
    ok = np.zeros(3, np.float32)
    assert from_item_errors([ok, ok]) is None
    cases = [(BadInputError(1, "image_decode.cv2_rgb", "not a recognised image"), 400),
             (LimitExceededError(1, "image_decode.cv2_rgb", "too many pixels"), 413),
             (ServerBusyError(1, None, "queue full"), 429),
             (DeadlineExceededError(1, None, "no answer"), 504),
             (ItemError(1, "op", "boom at /srv/secret/model.py line 3"), 500)]
    for error, status in cases:
        answer = from_item_errors([ok, error])
        assert answer.status == status and answer.message.startswith("input[1]:")
        assert "/srv/secret" not in answer.message
    bad = from_item_errors([ServerBusyError(0, None, "busy"), ok,
                            BadInputError(2, "image_decode.cv2_rgb", "not a recognised image")])
    assert bad.status == 400 and bad.message.startswith("input[2]: operator image_decode")
    assert "(2 of 3 items failed)" in bad.message
    assert from_item_errors([ServerBusyError(0, None, "busy")]).headers == {"Retry-After": "1"}


def test_call_failures_map_without_leaking_the_triton_address():
    unavailable = from_exception(ServerUnavailableError("10.1.2.3:8001", "grpc", "refused"))
    assert unavailable.status == 503 and "10.1.2.3" not in unavailable.message
    assert from_exception(ClientError("key refused by 10.1.2.3")).status == 502
    internal = from_exception(RuntimeError("/srv/secret"))
    assert internal.status == 500 and "/srv/secret" not in internal.message


def test_float_and_base64_encodings_agree():
    vector = np.array([0.1, -2.5, 3e-8, 1e10], dtype=np.float32)
    floats = encode_embedding(vector, "float")
    assert np.array(floats, dtype=np.float32).tolist() == vector.tolist()
    packed = encode_embedding(vector, "base64")
    assert np.frombuffer(base64.b64decode(packed), "<f4").tolist() == vector.tolist()


def test_embeddings_body_and_usage():
    body = embeddings_body([np.ones((1, 2), np.float32), np.zeros(2, np.float32)], "m",
                           "float", 7)
    assert body == {"object": "list", "model": "m",
                    "usage": {"prompt_tokens": 7, "total_tokens": 7},
                    "data": [{"object": "embedding", "index": 0, "embedding": [1.0, 1.0]},
                             {"object": "embedding", "index": 1, "embedding": [0.0, 0.0]}]}
    assert count_usage(["two words", " ", "three more words"]) == 5
    assert count_usage([b"img", b"img2"]) == 2
    assert count_usage(["ab", "c"], token_counter=lambda items: [len(i) for i in items]) == 3
    with pytest.raises(GatewayError) as caught:
        embeddings_body([{"a": np.ones(2)}], "m", "float", 1)
    assert caught.value.status == 500


def test_body_limits_from_the_header_and_while_streaming():
    check_content_length({"content-length": "100"}, 100)
    check_content_length({}, 100)
    with pytest.raises(GatewayError) as caught:
        check_content_length({"content-length": "101"}, 100)
    assert caught.value.status == 413
    with pytest.raises(GatewayError) as caught:
        check_content_length({"content-length": "-1"}, 100)
    assert caught.value.status == 400

    pulled = []

    async def chunks(n):
        for k in range(n):
            pulled.append(k)
            yield b"x" * 40

    assert asyncio.run(read_limited(chunks(2), 100)) == b"x" * 80
    pulled.clear()
    with pytest.raises(GatewayError) as caught:
        asyncio.run(read_limited(chunks(1000), 100))
    assert caught.value.status == 413 and pulled == [0, 1, 2]  # stopped at the limit


def test_json_body_errors():
    assert parse_json(b'{"a": 1}') == {"a": 1}
    for raw in (b"", b"{oops", b"\xff\xfe"):
        with pytest.raises(GatewayError) as caught:
            parse_json(raw)
        assert caught.value.status == 400


def test_importing_towhee_rt_or_the_gateway_package_loads_no_web_stack():
    code = ("import sys, towhee_rt, towhee_rt.gateway, towhee_rt.gateway.inputs; "
            "heavy = {'fastapi', 'starlette', 'uvicorn', 'prometheus_client'} & set(sys.modules); "
            "print(sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "[]"


def test_missing_dependency_names_the_extra(monkeypatch):
    from towhee_rt.gateway import _deps

    monkeypatch.setitem(sys.modules, "uvicorn", None)  # as if not installed
    with pytest.raises(ImportError, match=r"pip install 'towhee_rt\[openai\]'"):
        _deps.require("uvicorn")
