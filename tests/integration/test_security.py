"""A hostile client against a served pipeline: limits, status codes, inputs as data.

One real tritonserver serves a decode-only pipeline (cheap: no model) with small request
limits, and the timm pipeline for the memory check. Requests go through raw tritonclient, as a
hostile client would send them (towhee_rt's own client checks the limits before sending).
"""
import os

import numpy as np
import pytest

import towhee_rt as towhee

pytestmark = pytest.mark.integration

MAX_ITEM = 400_000
MAX_REQUEST = 600_000


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = tmp_path_factory.mktemp("repo")
    decode = (towhee.dummy_input()
              .pipeline_config(max_item_bytes=MAX_ITEM, max_request_bytes=MAX_REQUEST)
              .image_decode.cv2_rgb().as_function())
    towhee.build_model_repo(decode, repo, model_name="decode", overwrite=True)
    with towhee.serve(repo, grpc_port=0, http_port=0, metrics_port=0) as srv:
        yield srv


def _infer(srv, protocol, items):
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
        return None, client.infer("decode", [tensor])
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
    (failure,) = towhee.backends._operator.decode_failures(str(exc))
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
    (failure,) = towhee.backends._operator.decode_failures(str(exc))
    assert failure.index == 1 and failure.kind == "limit"
    assert f"more than max_item_bytes={MAX_ITEM}" in failure.message
    assert "pipeline_config(max_item_bytes=...)" in failure.message

    under_each = [os.urandom(MAX_ITEM - 10) for _ in range(2)]  # together over the request
    exc, _ = _infer(server, protocol, under_each)
    failures = towhee.backends._operator.decode_failures(str(exc))
    assert [f.index for f in failures] == [0, 1] and {f.kind for f in failures} == {"limit"}
    assert f"more than max_request_bytes={MAX_REQUEST}" in failures[0].message
    assert server.models_ready()
