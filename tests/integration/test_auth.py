"""Access to a served pipeline: the API key for inference, the admin APIs closed by default.

Two real tritonservers (loopback, free ports, always stopped) serve one decode-only repository
(``image_decode.cv2_rgb``: cheap, no model): one started with ``api_key``, one without. Raw
tritonclient and urllib requests play the clients that do not know the key.
"""
from __future__ import annotations

import json
import logging
import urllib.error
import urllib.request

import numpy as np
import pytest

import towhee_rt as towhee
from towhee_rt.errors import ClientError, ServerError
from towhee_rt.triton import process as process_module
from towhee_rt.triton.flags import ADMIN_KEY_HEADER, API_KEY_HEADER, GRPC_HEADER_PREFIX
from towhee_rt.triton.ports import find_free_port
from towhee_rt.triton.server import TritonServer

from .test_server import SERVE_COMMAND, _cli, _Lines

pytestmark = pytest.mark.integration

API_KEY = "test-api-key_0123456789"
IMAGES = ["chelsea.jpg", "coffee.jpg"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    pipe = towhee.dummy_input().image_decode.cv2_rgb().as_function()
    return towhee.build_model_repo(pipe, tmp_path_factory.mktemp("auth") / "repo").path


@pytest.fixture(scope="module")
def local(good_dir):
    pipe = towhee.dummy_input().image_decode.cv2_rgb().as_function()
    paths = [str(good_dir / name) for name in IMAGES]
    return paths, pipe(paths)


@pytest.fixture(scope="module")
def keyed(repo):
    with towhee.serve(repo, grpc_port=0, http_port=0, metrics_port=0, api_key=API_KEY) as srv:
        yield srv


@pytest.fixture(scope="module")
def plain(repo):
    with towhee.serve(repo, grpc_port=0, http_port=0, metrics_port=0) as srv:
        yield srv


def _http(server: TritonServer, method: str, path: str, body: bytes = b"{}",
          headers=None):
    """``(status, body)`` of one request to ``server``'s HTTP endpoint."""
    request = urllib.request.Request(f"http://{server.http_url}{path}", method=method,
                                     data=body if method == "POST" else None,
                                     headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _raw_infer(module, url: str, image: bytes, headers=None):
    client = module.InferenceServerClient(url)
    try:
        tensor = module.InferInput("image", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[image]], dtype=np.object_))
        return client.infer("pipeline", [tensor], headers=headers).as_numpy("image_output")
    finally:
        client.close()


# --------------------------------------------------------------------------------- api_key
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_inference_without_or_with_a_wrong_key_is_refused(keyed, local, protocol):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient
    from tritonclient.utils import InferenceServerException

    module, url = ((httpclient, keyed.http_url) if protocol == "http"
                   else (grpcclient, keyed.grpc_url))
    prefix = GRPC_HEADER_PREFIX if protocol == "grpc" else ""
    image = open(local[0][0], "rb").read()
    for headers in (None, {prefix + API_KEY_HEADER: "wrong-key"},
                    {API_KEY_HEADER if protocol == "grpc" else "x-api-key": API_KEY}):
        with pytest.raises(InferenceServerException, match="restricted, expecting header"):
            _raw_infer(module, url, image, headers)
    served = _raw_infer(module, url, image, {prefix + API_KEY_HEADER: API_KEY})
    np.testing.assert_array_equal(served[0], local[1][0])


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_client_and_remote_send_the_key(keyed, local, protocol):
    paths, expected = local
    url = keyed.grpc_url if protocol == "grpc" else keyed.http_url
    with towhee.Client(url, protocol=protocol, api_key=API_KEY) as client:
        assert client.ready()
        assert client.served.kind == "image"
        results = client.infer(paths, batch_size=2)
    results_remote = towhee.dc(paths).remote(url=url, protocol=protocol, api_key=API_KEY,
                                             mode="async_infer", concurrency=2)
    for got in (results, results_remote):
        assert len(got) == len(expected)
        for served, want in zip(got, expected):
            np.testing.assert_array_equal(served, want)


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_missing_or_wrong_key_is_one_client_error_saying_how_to_pass_it(keyed, local,
                                                                         protocol):
    url = keyed.grpc_url if protocol == "grpc" else keyed.http_url
    with pytest.raises(ClientError) as missing:
        towhee.dc(local[0]).remote(url=url, protocol=protocol)
    assert "requires an API key" in str(missing.value) and "api_key=" in str(missing.value)
    with pytest.raises(ClientError, match="refused the API key this client sent"):
        towhee.Client(url, protocol=protocol, api_key="wrong-key").served


def test_health_and_metadata_stay_open_and_the_launcher_still_sees_its_models(keyed):
    assert _http(keyed, "GET", "/v2/health/ready")[0] == 200
    assert _http(keyed, "GET", "/v2/models/pipeline/ready")[0] == 200
    status, body = _http(keyed, "GET", "/v2/models/pipeline")
    assert status == 200 and json.loads(body)["inputs"][0]["name"] == "image"
    # The model's config carries the operators' params: it is behind the key too.
    assert _http(keyed, "GET", "/v2/models/pipeline/config")[0] == 403
    assert _http(keyed, "GET", "/v2/models/pipeline/config",
                 headers={API_KEY_HEADER: API_KEY})[0] == 200
    assert keyed.models_ready()
    assert set(keyed.model_states()) == {"pipeline", "pipeline_0_image_decode_cv2_rgb"}


# ------------------------------------------------------------------------------ admin APIs
ADMIN_REQUESTS = [
    ("POST", "/v2/logging", b'{"log_verbose_level": 1}'),
    ("POST", "/v2/systemsharedmemory/region/x/register",
     b'{"key": "/triton_python_backend_shm_region_1", "offset": 0, "byte_size": 16}'),
    ("POST", "/v2/repository/index", b"{}"),
    ("POST", "/v2/repository/models/pipeline/unload", b"{}"),
    ("GET", "/v2/models/pipeline/stats", b""),
    ("GET", "/v2/trace/setting", b""),
]


@pytest.mark.parametrize("method, path, body", ADMIN_REQUESTS,
                         ids=[path for _, path, _ in ADMIN_REQUESTS])
def test_admin_apis_are_closed_by_default(plain, method, path, body):
    status, answer = _http(plain, method, path, body)
    assert status == 403, answer
    assert f"expecting header '{ADMIN_KEY_HEADER}'" in answer.decode()
    wrong = _http(plain, method, path, body, headers={ADMIN_KEY_HEADER: "guess"})
    assert wrong[0] == 403


def test_admin_apis_over_grpc_are_closed_by_default(plain):
    import tritonclient.grpc as grpcclient
    from tritonclient.utils import InferenceServerException

    client = grpcclient.InferenceServerClient(plain.grpc_url)
    try:
        for call in (lambda: client.update_log_settings({"log_verbose_level": 1}),
                     lambda: client.register_system_shared_memory(
                         "x", "/triton_python_backend_shm_region_1", 16),
                     lambda: client.get_model_repository_index(),
                     lambda: client.unload_model("pipeline"),
                     lambda: client.get_inference_statistics("pipeline"),
                     lambda: client.get_trace_settings()):
            with pytest.raises(InferenceServerException, match="restricted, expecting header "
                                                               f"'{GRPC_HEADER_PREFIX}"
                                                               f"{ADMIN_KEY_HEADER}'"):
                call()
        assert client.is_model_ready("pipeline")  # health stays open
    finally:
        client.close()


def test_without_api_key_health_metadata_config_and_inference_work(plain, local):
    paths, expected = local
    assert _http(plain, "GET", "/v2/health/ready")[0] == 200
    assert _http(plain, "GET", "/v2/models/pipeline")[0] == 200
    assert _http(plain, "GET", "/v2/models/pipeline/config")[0] == 200
    for protocol, url in (("grpc", plain.grpc_url), ("http", plain.http_url)):
        got = towhee.dc(paths).remote(url=url, protocol=protocol)
        np.testing.assert_array_equal(got[1], expected[1])
    assert plain.models_ready() and plain.admin_key_random
    # The launcher knows the admin key it drew for this start: the repository index answers.
    status, body = _http(plain, "POST", "/v2/repository/index",
                         headers={ADMIN_KEY_HEADER: plain.admin_key})
    assert status == 200 and {m["state"] for m in json.loads(body)} == {"READY"}
    assert plain.admin_key not in repr(plain)


def test_a_given_admin_key_opens_the_admin_apis(repo):
    with towhee.serve(repo, grpc_port=0, http_port=0, metrics_port=0,
                      admin_key="admin-key-0123456789") as srv:
        assert srv.admin_key == "admin-key-0123456789" and not srv.admin_key_random
        headers = {ADMIN_KEY_HEADER: "admin-key-0123456789"}
        assert _http(srv, "GET", "/v2/logging", headers=headers)[0] == 200
        assert _http(srv, "GET", "/v2/logging")[0] == 403


# ------------------------------------------------------------------- non-loopback warning
class _Stop(ServerError):
    pass


def _refuse_to_launch(*args, **kwargs):
    raise _Stop("test: not launched")


@pytest.mark.parametrize("explicit_binary", [False, True], ids=["embedded", "--tritonserver"])
def test_binding_beyond_loopback_warns(repo, monkeypatch, caplog, explicit_binary):
    # Nothing is started: the launch itself is replaced, after the command is prepared.
    monkeypatch.setattr(process_module.subprocess, "Popen", _refuse_to_launch)
    kwargs = {}
    if explicit_binary:
        from towhee_rt.triton.embedded import prepare_embedded_tritonserver

        kwargs["tritonserver"] = str(prepare_embedded_tritonserver()[0])
    srv = TritonServer(repo, host="0.0.0.0", **kwargs)
    with caplog.at_level(logging.WARNING, logger="towhee_rt"), pytest.raises(_Stop):
        srv.start()
    embedded_warning = "predates the 2025 security fixes" in caplog.text
    assert embedded_warning is (not explicit_binary)
    if not explicit_binary:
        assert "CVE-2025-23310/23311/23319/23320/23334" in caplog.text
        assert "loopback only" in caplog.text
    assert "without an api_key: anyone who reaches this machine" in caplog.text


def test_loopback_does_not_warn(repo, monkeypatch, caplog):
    monkeypatch.setattr(process_module.subprocess, "Popen", _refuse_to_launch)
    with caplog.at_level(logging.WARNING, logger="towhee_rt"), pytest.raises(_Stop):
        TritonServer(repo, host="127.0.0.1").start()
    assert caplog.text == ""


def test_cli_warns_for_a_non_loopback_host(repo, monkeypatch, caplog, capsys):
    from towhee_rt import cli

    monkeypatch.setattr(process_module.subprocess, "Popen", _refuse_to_launch)
    with caplog.at_level(logging.WARNING, logger="towhee_rt"):
        code = cli.main(["serve", str(repo), "--host", "0.0.0.0", "--grpc-port", "0",
                         "--http-port", "0", "--metrics-port", "0"])
    assert code == 1 and "test: not launched" in capsys.readouterr().err
    assert "embedded tritonserver 2.51" in caplog.text


# ------------------------------------------------------------------------ the command line
def test_cli_serves_with_a_key_file(repo, local, tmp_path):
    key_file = tmp_path / "api_key"
    key_file.write_text(API_KEY + "\n")
    key_file.chmod(0o600)
    ports = [str(find_free_port()) for _ in range(3)]
    process = _cli([str(repo), "--grpc-port", ports[0], "--http-port", ports[1],
                    "--metrics-port", ports[2], "--api-key-file", str(key_file)],
                   SERVE_COMMAND)
    try:
        shown = _Lines(process.stdout).until("Press Ctrl-C to stop", 60)
        assert f"inference: requires the key (HTTP header {API_KEY_HEADER}" in shown, shown
        assert "admin APIs (shared-memory" in shown and "closed" in shown
        assert API_KEY not in shown
        url = f"127.0.0.1:{ports[0]}"
        with pytest.raises(ClientError, match="requires an API key"):
            towhee.Client(url).served
        got = towhee.dc(local[0][:1]).remote(url=url, api_key=API_KEY)
        np.testing.assert_array_equal(got[0], local[1][0])
    finally:
        process.terminate()
        try:
            process.wait(30)
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
    assert process.returncode == 0
