"""A served pipeline speaks the Open Inference Protocol v2 to clients no one here wrote.

One real tritonserver (loopback, free ports, always stopped) serves an image pipeline
(``image_decode.cv2_rgb`` + ``image_embedding.timm('test_resnet')``) as ``image`` and a text
pipeline (``text_embedding.sentence_transformers``, MiniLM) as ``text``; a second one, started
with ``api_key=``, serves a decode-only pipeline. They are driven by

* KServe's Python client (``kserve``: ``InferenceGRPCClient``, and ``InferenceRESTClient`` with
  ``RESTConfig(protocol="v2")``; both async-only), and
* plain HTTP/JSON built by hand with ``http.client``, and the exact curl commands of
  ``docs/http-json.md``,

and every vector is compared with the local pipeline's.
"""
from __future__ import annotations

import http.client
import json
import re
import shutil
import struct
import subprocess
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import pytest

import towhee_rt as towhee
from towhee_rt.backends.base64_hint import looks_like_base64_image
from towhee_rt.triton import bulletins
from towhee_rt.triton.flags import API_KEY_HEADER, GRPC_HEADER_PREFIX

from ._served import serve_pipelines

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "http-json.md"
MAX_RELATIVE_ERROR = 1e-5
IMAGES = ["chelsea.jpg", "camera_gray.png", "rocket.webp"]
SENTENCES = ["a photo of a cat", "Triton serves embeddings.", "naïve café, 東京"]
API_KEY = "conformance-key_0123456789abcdef"
DECODE_OPERATOR = "image_decode.cv2_rgb"


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def pipes():
    image = (towhee.dummy_input().image_decode.cv2_rgb()
             .image_embedding.timm(model_name="test_resnet", pretrained=False).as_function())
    text = towhee.dummy_input().text_embedding.sentence_transformers().as_function()
    return {"image": image, "text": text}


@pytest.fixture(scope="module")
def local(pipes, good_dir):
    paths = [str(good_dir / n) for n in IMAGES]
    return {"paths": paths, "files": [Path(p).read_bytes() for p in paths],
            "image": pipes["image"](paths), "text": pipes["text"](SENTENCES),
            "doc_texts": pipes["text"](["a photo of a cat", "Triton serves embeddings."])}


@pytest.fixture(scope="module")
def served(pipes, tmp_path_factory):
    with serve_pipelines(pipes, tmp_path_factory.mktemp("conformance") / "repo") as server:
        yield server


@pytest.fixture(scope="module")
def keyed(tmp_path_factory):
    pipe = towhee.dummy_input().image_decode.cv2_rgb().as_function()
    repo = towhee.build_model_repo(pipe, tmp_path_factory.mktemp("keyed") / "repo").path
    with towhee.serve(repo, grpc_port=0, http_port=0, metrics_port=0,
                      api_key=API_KEY) as server:
        yield server


# ---------------------------------------------------------------------- plain HTTP helpers
def _request(server, method: str, path: str, body: Optional[bytes] = None,
             headers: Optional[Dict[str, str]] = None) -> Tuple[int, Dict[str, str], bytes]:
    """``(status, headers, body)`` of one request, over a fresh ``http.client`` connection."""
    host, port = server.http_url.rsplit(":", 1)
    connection = http.client.HTTPConnection(host, int(port), timeout=60)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return (response.status, {k.lower(): v for k, v in response.getheaders()},
                response.read())
    finally:
        connection.close()


def _binary_bytes_request(name: str, items: Sequence[bytes], binary_output: bool = False,
                          output: Optional[str] = "embedding") -> Tuple[bytes, Dict[str, str]]:
    """Body and headers of an infer request whose BYTES input travels with the binary tensor
    extension: JSON header, then each element as a 4-byte little-endian length + its bytes."""
    raw = b"".join(struct.pack("<I", len(item)) + item for item in items)
    request = {"inputs": [{"name": name, "shape": [len(items), 1], "datatype": "BYTES",
                           "parameters": {"binary_data_size": len(raw)}}]}
    if output:
        request["outputs"] = [{"name": output, "parameters": {"binary_data": binary_output}}]
    header = json.dumps(request).encode()
    return header + raw, {"Inference-Header-Content-Length": str(len(header)),
                          "Content-Type": "application/octet-stream"}


def _json_request(name: str, items: List[str]) -> Tuple[bytes, Dict[str, str]]:
    body = json.dumps({"inputs": [{"name": name, "shape": [len(items), 1], "datatype": "BYTES",
                                   "data": items}]}).encode()
    return body, {"Content-Type": "application/json"}


def _embeddings_from_json(body: bytes) -> np.ndarray:
    output = json.loads(body)["outputs"][0]
    assert output["name"] == "embedding" and output["datatype"] == "FP32"
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


def _error(body: bytes) -> str:
    document = json.loads(body)
    assert set(document) == {"error"}, document
    return document["error"]


def _assert_close(got, want):
    got, want = np.asarray(got), np.asarray(want)
    assert got.dtype == np.float32 and got.shape == want.shape, (got.shape, want.shape)
    scale = float(np.max(np.abs(want))) or 1.0
    assert float(np.max(np.abs(got - want))) / scale <= MAX_RELATIVE_ERROR


def _item_errors(message: str) -> List[dict]:
    """The ``towhee_rt.item_errors=`` JSON of an error message (see docs/http-json.md)."""
    marker = "towhee_rt.item_errors="
    assert marker in message, message
    rows, _ = json.JSONDecoder().raw_decode(message, message.index(marker) + len(marker))
    return rows


# ------------------------------------------------------------------- plain HTTP: metadata
def test_health_and_server_metadata(served):
    assert _request(served, "GET", "/v2/health/live")[0] == 200
    assert _request(served, "GET", "/v2/health/ready")[0] == 200
    status, _, body = _request(served, "GET", "/v2")
    assert status == 200
    metadata = json.loads(body)
    assert metadata["name"] == "triton"
    assert "binary_tensor_data" in metadata["extensions"]
    # The embedded server is the one the bulletins module describes.
    assert metadata["version"].startswith(bulletins.EMBEDDED_TRITON_VERSION + ".")
    assert bulletins.ngc_release(metadata["version"]) == "24.10"
    assert len(bulletins.open_bulletins(bulletins.ngc_release(metadata["version"]))) == len(
        bulletins.BULLETINS)


@pytest.mark.parametrize("model, kind", [("image", "image"), ("text", "text")])
def test_model_metadata_and_readiness(served, model, kind):
    assert _request(served, "GET", f"/v2/models/{model}/ready")[0] == 200
    status, _, body = _request(served, "GET", f"/v2/models/{model}")
    assert status == 200
    metadata = json.loads(body)
    assert metadata["name"] == model and metadata["platform"] == "ensemble"
    assert metadata["inputs"] == [{"name": kind, "datatype": "BYTES", "shape": [-1, 1]}]
    assert metadata["outputs"] == [{"name": "embedding", "datatype": "FP32", "shape": [-1, -1]}]


def test_unknown_model_is_an_error_with_a_json_body(served):
    status, _, body = _request(served, "GET", "/v2/models/no_such_model")
    assert status in (400, 404) and "no_such_model" in _error(body)
    request, headers = _json_request("text", ["x"])
    status, _, body = _request(served, "POST", "/v2/models/no_such_model/infer", request,
                               headers)
    assert status in (400, 404) and "no_such_model" in _error(body)


# --------------------------------------------------------------------- plain HTTP: infer
def test_images_with_the_binary_extension_equal_local(served, local):
    body, headers = _binary_bytes_request("image", local["files"])
    status, _, answer = _request(served, "POST", "/v2/models/image/infer", body, headers)
    assert status == 200, answer
    _assert_close(_embeddings_from_json(answer), np.stack(local["image"]))


def test_binary_output_comes_after_the_json_header(served, local):
    body, headers = _binary_bytes_request("image", local["files"][:2], binary_output=True)
    status, answer_headers, answer = _request(served, "POST", "/v2/models/image/infer", body,
                                              headers)
    assert status == 200
    length = int(answer_headers["inference-header-content-length"])
    output = json.loads(answer[:length])["outputs"][0]
    size = output["parameters"]["binary_data_size"]
    assert size == len(answer) - length == 4 * int(np.prod(output["shape"]))
    vectors = np.frombuffer(answer[length:], dtype="<f4").reshape(output["shape"])
    _assert_close(vectors, np.stack(local["image"][:2]))


def test_text_as_json_data_equals_local(served, local):
    body, headers = _json_request("text", SENTENCES)
    status, _, answer = _request(served, "POST", "/v2/models/text/infer", body, headers)
    assert status == 200, answer
    _assert_close(_embeddings_from_json(answer), np.stack(local["text"]))


def test_text_with_the_binary_extension_equals_local(served, local):
    body, headers = _binary_bytes_request("text", [s.encode() for s in SENTENCES])
    status, _, answer = _request(served, "POST", "/v2/models/text/infer", body, headers)
    assert status == 200, answer
    _assert_close(_embeddings_from_json(answer), np.stack(local["text"]))


def test_a_bad_image_is_a_400_naming_the_operator_and_the_item(served, local, bad_dir):
    items = [local["files"][0], (bad_dir / "not_an_image.jpg").read_bytes(), local["files"][1]]
    body, headers = _binary_bytes_request("image", items)
    status, answer_headers, answer = _request(served, "POST", "/v2/models/image/infer", body,
                                              headers)
    assert status == 400, answer
    # Triton 2.51 labels its JSON error bodies text/plain (so KServe's REST client, which
    # reads the error only from application/json, shows just the status): parse the body.
    assert answer_headers.get("content-type", "").split(";")[0] in ("application/json",
                                                                     "text/plain")
    message = _error(answer)
    assert DECODE_OPERATOR in message and "not a recognised image" in message
    rows = _item_errors(message)
    assert [(r["index"], r["operator"], r["kind"]) for r in rows] == [
        (1, DECODE_OPERATOR, "bad_input")]
    # The server is still serving.
    assert _request(served, "GET", "/v2/models/image/ready")[0] == 200


def test_base64_in_json_is_taken_as_raw_bytes(served, local):
    """The new user's finding: curl with base64 in JSON gets 'not a recognised image', for
    that item of the decode operator (the hint it now carries: the next test)."""
    import base64

    text = base64.b64encode(local["files"][0]).decode()
    assert looks_like_base64_image(text.encode())
    body, headers = _json_request("image", [text])
    status, _, answer = _request(served, "POST", "/v2/models/image/infer", body, headers)
    assert status == 400
    message = _error(answer)
    assert "not a recognised image" in message and DECODE_OPERATOR in message
    assert [(r["index"], r["operator"]) for r in _item_errors(message)] == [
        (0, DECODE_OPERATOR)]


def test_base64_in_json_gets_a_hint_naming_the_binary_extension(served, local):
    import base64

    body, headers = _json_request("image", [base64.b64encode(local["files"][0]).decode()])
    message = _error(_request(served, "POST", "/v2/models/image/infer", body, headers)[2])
    assert "base64" in message and "binary tensor extension" in message
    assert "Inference-Header-Content-Length" in message and "docs/http-json.md" in message


#: Triton 2.51 answers malformed JSON with 500 (the protocol calls for 400: the client's fault).
MALFORMED_JSON_STATUS = (400, 500)


@pytest.mark.parametrize("case, body, headers", [
    ("bad json", b'{"inputs": [', {"Content-Type": "application/json"}),
    ("wrong input name", *_json_request("picture", ["x"])),
    ("wrong datatype", json.dumps({"inputs": [{"name": "image", "shape": [1, 1],
                                               "datatype": "FP32", "data": [1.0]}]}).encode(),
     {"Content-Type": "application/json"}),
    ("wrong shape", json.dumps({"inputs": [{"name": "image", "shape": [1, 2],
                                            "datatype": "BYTES", "data": ["a", "b"]}]}).encode(),
     {"Content-Type": "application/json"}),
    ("header length past the body", b'{"inputs": []}',
     {"Inference-Header-Content-Length": "999"}),
])
def test_malformed_requests_are_400_with_a_json_error(served, case, body, headers):
    status, _, answer = _request(served, "POST", "/v2/models/image/infer", body, headers)
    expected = MALFORMED_JSON_STATUS if case == "bad json" else (400,)
    assert status in expected, (case, status, answer)
    assert _error(answer)


# ---------------------------------------------------------------------------- API key
def test_without_the_key_inference_is_refused_and_health_stays_open(keyed, local):
    body, headers = _binary_bytes_request("image", local["files"][:1], output=None)
    status, _, answer = _request(keyed, "POST", "/v2/models/pipeline/infer", body, headers)
    assert status in (401, 403), answer
    assert API_KEY_HEADER in _error(answer)
    wrong = _request(keyed, "POST", "/v2/models/pipeline/infer", body,
                     {**headers, API_KEY_HEADER: "wrong"})
    assert wrong[0] in (401, 403)
    status, _, answer = _request(keyed, "POST", "/v2/models/pipeline/infer", body,
                                 {**headers, API_KEY_HEADER: API_KEY})
    assert status == 200, answer
    assert _request(keyed, "GET", "/v2/health/ready")[0] == 200
    assert _request(keyed, "GET", "/v2/models/pipeline")[0] == 200


# ------------------------------------------------------------------ docs/http-json.md
def _doc_block(tag: str) -> str:
    """The bash block that follows ``<!-- tested: <tag> ...-->`` in docs/http-json.md."""
    match = re.search(r"<!-- tested: " + re.escape(tag) + r"\b.*?-->\s*```bash\n(.*?)```",
                      DOC.read_text(), re.S)
    assert match, f"no tested block {tag!r} in {DOC}"
    return match.group(1)


def _run_doc_block(tag: str, cwd: Path, **env) -> bytes:
    import os

    result = subprocess.run(["bash", "-euo", "pipefail", "-c", _doc_block(tag)], cwd=cwd,
                            env={**os.environ, **env}, capture_output=True, timeout=60)
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout


needs_curl = pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")


@needs_curl
@pytest.mark.parametrize("index", [0, 1, 2])
def test_the_documented_curl_command_for_an_image(served, local, tmp_path, index):
    answer = _run_doc_block("binary-image", tmp_path, URL=served.http_url, MODEL="image",
                            IMG=local["paths"][index])
    _assert_close(_embeddings_from_json(answer), local["image"][index][None])


@needs_curl
def test_the_documented_curl_command_for_text(served, local, tmp_path):
    answer = _run_doc_block("json-text", tmp_path, URL=served.http_url, MODEL="text")
    _assert_close(_embeddings_from_json(answer), np.stack(local["doc_texts"]))


# ---------------------------------------------------------------------------- kserve
def _kserve(server, transport: str, model: str, items=None, texts=None, binary: bool = True,
            headers=None, input_name: Optional[str] = None) -> dict:
    """One KServe client call, in its own process (tests/integration/_kserve_client.py says
    why): the JSON answer of that script."""
    import base64
    import importlib.util
    import os
    import sys

    if importlib.util.find_spec("kserve") is None:
        pytest.skip("KServe's client is not installed: pip install -e '.[test]'")
    job = {"transport": transport, "model": model, "input": input_name or model,
           "url": server.grpc_url if transport == "grpc" else server.http_url,
           "binary": binary, "headers": headers}
    if texts is not None:
        job["texts"] = list(texts)
    else:
        job["items_b64"] = [base64.b64encode(item).decode() for item in items]
    result = subprocess.run([sys.executable, str(Path(__file__).with_name("_kserve_client.py"))],
                            input=json.dumps(job).encode(), capture_output=True, timeout=120,
                            env={**os.environ, "PYTHONPATH": ""}, cwd=Path(__file__).parent)
    assert result.returncode == 0, result.stderr.decode()[-3000:]
    return json.loads(result.stdout)


#: What KServe's REST client's server health calls give against Triton 2.51: they parse
#: ``{"live": true}`` / ``{"ready": true}`` from the body, and Triton answers 200 with an empty
#: body (model readiness works: the client reads it from the status code).
REST_HEALTH = ["raised JSONDecodeError", "raised JSONDecodeError", True]


def _vectors(answer: dict, transport: str) -> np.ndarray:
    assert answer["ok"], answer
    health = [answer["live"], answer["ready"], answer["model_ready"]]
    assert health == ([True] * 3 if transport == "grpc" else REST_HEALTH), health
    assert list(answer["outputs"]) == ["embedding"]
    output = answer["outputs"]["embedding"]
    assert output["datatype"] == "FP32"
    return np.asarray(output["data"], dtype=np.float32).reshape(output["shape"])


@pytest.mark.parametrize("transport", ["grpc", "rest"])
@pytest.mark.parametrize("model", ["image", "text"])
def test_kserve_clients_binary(served, local, transport, model):
    if model == "image":
        answer = _kserve(served, transport, model, items=local["files"])
    else:
        answer = _kserve(served, transport, model, texts=SENTENCES)
    _assert_close(_vectors(answer, transport), np.stack(local[model]))


def test_kserve_rest_client_text_as_json(served, local):
    answer = _kserve(served, "rest", "text", texts=SENTENCES, binary=False)
    _assert_close(_vectors(answer, "rest"), np.stack(local["text"]))


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_kserve_clients_see_a_bad_image_as_an_error_naming_the_operator(served, local,
                                                                         bad_dir, transport):
    items = [local["files"][0], (bad_dir / "truncated.jpg").read_bytes()]
    answer = _kserve(served, transport, "image", items=items)
    assert not answer["ok"], answer
    if transport == "grpc":
        assert answer["code"] == "INVALID_ARGUMENT"
        message = answer["message"]
    else:
        assert answer["status"] == 400
        message = _error(answer["message"].encode())
    assert [(r["index"], r["operator"]) for r in _item_errors(message)] == [
        (1, DECODE_OPERATOR)]


@pytest.mark.parametrize("transport", ["grpc", "rest"])
def test_kserve_clients_with_and_without_the_key(keyed, local, transport):
    refused = _kserve(keyed, transport, "pipeline", items=local["files"][:1],
                      input_name="image")
    assert not refused["ok"]
    if transport == "grpc":
        assert refused["code"] in ("UNAVAILABLE", "PERMISSION_DENIED", "UNAUTHENTICATED")
    else:
        assert refused["status"] in (401, 403)
    assert API_KEY_HEADER in refused["message"]
    key = (GRPC_HEADER_PREFIX if transport == "grpc" else "") + API_KEY_HEADER
    allowed = _kserve(keyed, transport, "pipeline", items=local["files"][:1],
                      input_name="image", headers=[[key, API_KEY]])
    assert allowed["ok"], allowed
    # The decode-only pipeline returns the decoded image: compare with the local one.
    decoded = towhee.dummy_input().image_decode.cv2_rgb().as_function()(local["paths"][:1])[0]
    sizes = [int(np.prod(o["shape"])) for o in allowed["outputs"].values()]
    assert decoded.size in sizes, (decoded.shape, allowed["outputs"].keys())
