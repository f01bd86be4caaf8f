"""The OpenAI-compatible gateway, queried by clients we did not write (``openai``,
``langchain-openai``, plain HTTP), gives the local pipeline's vectors; its errors are OpenAI's.

One real tritonserver (with an API key) serves a text pipeline (all-MiniLM-L6-v2, real weights)
and an image pipeline (timm test_resnet, small byte limits); one gateway in front of each.
"""
from __future__ import annotations

import base64
import json

import numpy as np
import pytest

import towhee_rt as towhee

pytestmark = pytest.mark.integration

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")
pytest.importorskip("starlette")

from towhee_rt.gateway import start_gateway  # noqa: E402

from ._served import serve_pipelines  # noqa: E402

KEY = "gw-test-key-0123456789"
SENTENCES = ["Triton serves embeddings.", "a photo of a cat", "naïve café, 東京",
             "word " * 300]
IMAGES = ["chelsea.jpg", "camera_gray.png", "rocket.webp"]
MAX_REQUEST_BYTES = 1 << 20   # image pipeline's limits, small enough to test
MAX_ITEM_BYTES = 256 << 10
BIG_IMAGE = "coffee_1920x1280.jpg"  # 345,936 bytes: over MAX_ITEM_BYTES


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    text = towhee.dummy_input().text_embedding.sentence_transformers().as_function()
    image = (towhee.dummy_input()
             .pipeline_config(max_request_bytes=MAX_REQUEST_BYTES, max_item_bytes=MAX_ITEM_BYTES)
             .image_decode.cv2_rgb()
             .image_embedding.timm(model_name="test_resnet", pretrained=False)
             .as_function())
    repo = tmp_path_factory.mktemp("gw") / "repo"
    with serve_pipelines({"minilm": text, "resnet": image}, repo, api_key=KEY) as server:
        yield server, text, image


@pytest.fixture(scope="module")
def text_gw(served):
    server, text, _ = served
    with start_gateway(server.grpc_url, model_name="minilm", api_key=KEY) as gateway:
        yield gateway, text


@pytest.fixture(scope="module")
def image_gw(served):
    server, _, image = served
    with start_gateway(server.grpc_url, model_name="resnet", api_key=KEY) as gateway:
        yield gateway, image


def _openai(gateway, key=KEY):
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key=key, max_retries=0, timeout=60)


def _assert_same(got, want):
    got = np.asarray(got, dtype=np.float32)
    want = np.stack(want)
    assert got.shape == want.shape
    assert float(np.abs(got - want).max()) <= 1e-5 * max(1.0, float(np.abs(want).max()))


def _b64(path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def _post(gateway, body, key=KEY, **kwargs):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.post(gateway.url + "/v1/embeddings", json=body, headers=headers, timeout=60,
                      **kwargs)


def _assert_openai_error(response, status, code=None, param=None):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "Traceback" not in error["message"] and "/tmp" not in error["message"]
    if code is not None:
        assert error["code"] == code
    if param is not None:
        assert error["param"] == param
    return error["message"]


# -- vectors: the same as the local pipeline ----------------------------------------------------
def test_openai_client_text_matches_local_pipeline(text_gw):
    gateway, pipe = text_gw
    client = _openai(gateway)
    want = pipe(SENTENCES)
    # openai-python asks for base64 by default and decodes it; float is asked explicitly.
    for fmt in (None, "float"):
        kwargs = {} if fmt is None else {"encoding_format": fmt}
        res = client.embeddings.create(model="minilm", input=SENTENCES, **kwargs)
        assert [d.index for d in res.data] == list(range(len(SENTENCES)))
        _assert_same([d.embedding for d in res.data], want)
        assert res.model == "minilm"
        assert res.usage.prompt_tokens == res.usage.total_tokens == \
            sum(len(s.split()) for s in SENTENCES)
    one = client.embeddings.create(model="minilm", input=SENTENCES[0])
    _assert_same([one.data[0].embedding], want[:1])


def test_langchain_openai_embeddings_match_local_pipeline(text_gw):
    langchain_openai = pytest.importorskip("langchain_openai")
    gateway, pipe = text_gw
    emb = langchain_openai.OpenAIEmbeddings(model="minilm", base_url=gateway.url + "/v1",
                                            api_key=KEY, check_embedding_ctx_length=False,
                                            max_retries=0)
    _assert_same(emb.embed_documents(SENTENCES), pipe(SENTENCES))
    _assert_same([emb.embed_query("a photo of a cat")], pipe(["a photo of a cat"]))


def test_openai_client_images_match_local_pipeline(image_gw, good_dir):
    gateway, pipe = image_gw
    paths = [good_dir / name for name in IMAGES]
    inputs = [f"data:image/jpeg;base64,{_b64(paths[0])}",   # a data URL
              f"data:image/png;base64,{_b64(paths[1])}",
              _b64(paths[2])]                                # bare base64, as Infinity takes
    res = _openai(gateway).embeddings.create(model="resnet", input=inputs)
    _assert_same([d.embedding for d in res.data], pipe([str(p) for p in paths]))
    assert res.usage.prompt_tokens == len(IMAGES)  # one per image


def test_base64_output_decodes_to_the_float_output(text_gw):
    gateway, _ = text_gw
    floats = _post(gateway, {"model": "minilm", "input": SENTENCES[:2],
                             "encoding_format": "float"}).json()
    packed = _post(gateway, {"model": "minilm", "input": SENTENCES[:2],
                             "encoding_format": "base64"}).json()
    for f, p in zip(floats["data"], packed["data"]):
        decoded = np.frombuffer(base64.b64decode(p["embedding"]), dtype="<f4")
        assert decoded.tolist() == np.asarray(f["embedding"], dtype=np.float32).tolist()
        assert decoded.shape == (384,)


def test_models_lists_the_served_pipeline(text_gw):
    gateway, _ = text_gw
    client = _openai(gateway)
    assert [m.id for m in client.models.list().data] == ["minilm"]
    assert client.models.retrieve("minilm").id == "minilm"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("gpt-4")


def test_responses_carry_the_served_pipelines_fingerprint(served, text_gw, image_gw, good_dir):
    server, text, image = served
    inputs = {"minilm": "hi", "resnet": _b64(good_dir / IMAGES[0])}
    for (gateway, pipe), name in ((text_gw, "minilm"), (image_gw, "resnet")):
        with towhee.Client(server.grpc_url, model_name=name, api_key=KEY) as client:
            assert client.fingerprint == pipe.fingerprint  # served == local, read from config
        response = _post(gateway, {"model": name, "input": [inputs[name]]})
        assert response.status_code == 200 and response.headers["X-Model-Fingerprint"] == pipe.fingerprint
        card = httpx.get(gateway.url + f"/v1/models/{name}",
                         headers={"Authorization": f"Bearer {KEY}"}, timeout=10).json()
        assert card["fingerprint"] == pipe.fingerprint
    assert text.fingerprint != image.fingerprint


# -- errors ---------------------------------------------------------------------------------
def test_missing_or_wrong_key_is_401(text_gw):
    gateway, _ = text_gw
    body = {"model": "minilm", "input": ["x"]}
    _assert_openai_error(_post(gateway, body, key=None), 401, "missing_api_key")
    _assert_openai_error(_post(gateway, body, key="wrong-key"), 401, "invalid_api_key")
    assert httpx.get(gateway.url + "/v1/models", timeout=10).status_code == 401
    with pytest.raises(openai.AuthenticationError):
        _openai(gateway, key="wrong-key").embeddings.create(model="minilm", input=["x"])


def test_bad_image_item_is_400_naming_its_index(image_gw, good_dir, bad_dir):
    gateway, _ = image_gw
    good = _b64(good_dir / "chelsea.jpg")
    not_image = base64.b64encode((bad_dir / "not_an_image.jpg").read_bytes()).decode()
    with pytest.raises(openai.BadRequestError) as caught:
        _openai(gateway).embeddings.create(model="resnet", input=[good, not_image, good])
    assert caught.value.status_code == 400
    assert "input[1]" in caught.value.message and "image_decode" in caught.value.message
    # Refused in the gateway, before Triton: not base64, a URL, a path, a number.
    for bad, said in (("%%%not base64%%%", "not valid base64"),
                      ("https://example.com/cat.jpg", "does not fetch URLs"),
                      ("/etc/passwd", "not valid base64"), (7, "got a number")):
        message = _assert_openai_error(_post(gateway, {"model": "resnet", "input": [good, bad]}),
                                       400, param="input")
        assert message.startswith("input[1]: expected a base64-encoded image") and said in message


def test_dimensions_is_refused(text_gw):
    gateway, _ = text_gw
    with pytest.raises(openai.BadRequestError) as caught:
        _openai(gateway).embeddings.create(model="minilm", input=["x"], dimensions=128)
    assert "dimensions" in caught.value.message


def test_unknown_model_is_404(text_gw):
    gateway, _ = text_gw
    with pytest.raises(openai.NotFoundError) as caught:
        _openai(gateway).embeddings.create(model="text-embedding-3-small", input=["x"])
    assert "minilm" in caught.value.message


def test_oversized_body_is_413_before_or_while_reading(image_gw):
    gateway, _ = image_gw
    filler = "A" * (MAX_REQUEST_BYTES + 1000)
    body = json.dumps({"model": "resnet", "input": [filler]}).encode()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    # Content-Length over the limit: refused from the header.
    response = httpx.post(gateway.url + "/v1/embeddings", content=body, headers=headers,
                          timeout=30)
    assert "max_request_bytes" in _assert_openai_error(response, 413, "request_too_large")

    # Chunked (no Content-Length): refused while streaming, once the limit is passed.
    def chunks():
        for k in range(0, len(body), 64 << 10):
            yield body[k:k + (64 << 10)]

    response = httpx.post(gateway.url + "/v1/embeddings", content=chunks(), headers=headers,
                          timeout=30)
    _assert_openai_error(response, 413, "request_too_large")
    # Without the key the limit is the same (nothing is read for an unauthenticated caller).
    assert httpx.post(gateway.url + "/v1/embeddings", content=body,
                      timeout=30).status_code == 401


def test_item_over_max_item_bytes_is_413(image_gw, good_dir):
    gateway, _ = image_gw
    response = _post(gateway, {"model": "resnet",
                               "input": [_b64(good_dir / "chelsea.jpg"),
                                         _b64(good_dir / BIG_IMAGE)]})
    message = _assert_openai_error(response, 413, "input_too_large", "input")
    assert message.startswith("input[1]:") and "max_item_bytes=262,144" in message


def test_bad_requests_are_400(text_gw):
    gateway, _ = text_gw
    for body, param in (({"model": "minilm"}, "input"),
                        ({"model": "minilm", "input": []}, "input"),
                        ({"model": "minilm", "input": [[1, 2, 3]]}, "input"),
                        ({"model": "minilm", "input": "x", "encoding_format": "int8"},
                         "encoding_format"),
                        ({"input": "x"}, "model")):
        _assert_openai_error(_post(gateway, body), 400, param=param)
    response = httpx.post(gateway.url + "/v1/embeddings", content=b"{not json",
                          headers={"Authorization": f"Bearer {KEY}"}, timeout=10)
    _assert_openai_error(response, 400, "invalid_json")
    _assert_openai_error(httpx.get(gateway.url + "/v1/nothing", timeout=10), 404)


def test_metrics_count_requests_items_and_errors(text_gw):
    gateway, _ = text_gw
    _post(gateway, {"model": "minilm", "input": ["one", "two"]})
    _post(gateway, {"model": "minilm", "input": ["x"]}, key="wrong-key")
    text = httpx.get(gateway.url + "/metrics", timeout=10).text
    assert 'towhee_rt_gateway_requests_total{endpoint="/v1/embeddings",status="200"}' in text
    assert 'towhee_rt_gateway_errors_total{endpoint="/v1/embeddings",kind="unauthorized"}' \
        in text
    assert "towhee_rt_gateway_items_total" in text
    assert "towhee_rt_gateway_request_seconds_bucket" in text
    assert httpx.get(gateway.url + "/health", timeout=10).status_code == 200


def test_start_fails_clearly_for_a_wrong_key_or_an_unknown_model(served):
    server, _, _ = served
    with pytest.raises(towhee.ClientError):
        start_gateway(server.grpc_url, model_name="minilm", api_key="not-the-key", timeout=5)
    with pytest.raises(towhee.ClientError):
        start_gateway(server.grpc_url, model_name="no_such_model", api_key=KEY, timeout=5)


def test_triton_gone_is_503_and_the_gateway_stays_up(tmp_path, good_dir):
    decode = towhee.dummy_input().image_decode.cv2_rgb().as_function()  # no weights: quick
    repo = towhee.build_model_repo(decode, tmp_path / "repo")
    server = towhee.serve(repo.path, grpc_port=0, http_port=0, metrics_port=0)
    try:
        gateway = start_gateway(server.grpc_url, timeout=3)
    except BaseException:
        server.stop()
        raise
    with gateway:
        ok = _post(gateway, {"model": "pipeline", "input": [_b64(good_dir / "chelsea.jpg")]},
                   key=None)
        assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] == 1
        server.stop()
        gone = _post(gateway, {"model": "pipeline", "input": [_b64(good_dir / "chelsea.jpg")]},
                     key=None)
        assert "unavailable" in _assert_openai_error(gone, 503, "server_unavailable")
        assert "127.0.0.1:" not in gone.text  # Triton's address stays in the log
        assert httpx.get(gateway.url + "/health", timeout=30).status_code == 503
    assert not gateway.running
