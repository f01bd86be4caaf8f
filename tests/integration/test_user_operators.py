"""The user's own operators, served: a real tritonserver equals the local run.

One repository holds three pipelines of user operators (tests/user_ops/): a registered function
feeding a registered class (text -> vector), a user ModelOperator in ONNX, and a probe that
reports which towhee_rt its module imported. The server's Python backend stubs run in a venv
that cannot import towhee_rt, from a working directory that does not hold it: the models work
on what the repository ships (the user's module and a stand-in towhee_rt package).
"""
import json
import os

import numpy as np
import pytest

import towhee_rt as towhee
from towhee_rt.errors import BadInputError
from towhee_rt.triton import config as triton_config

from ..user_ops import probe_ops, text_ops, tiny_model  # noqa: F401  (they register operators)
from ..user_ops._python import python_without_towhee_rt

pytestmark = pytest.mark.integration

TEXTS = ["Hello   World hello", "Triton serves EMBEDDINGS", "one"]
FEATURES = list(np.random.default_rng(7).standard_normal((5, 8)).astype(np.float32))


def _pipelines():
    words = (towhee.dummy_input().test_text.clean(max_words=8)
             .test_text.hashed_words(dim=16).as_function())
    model = (towhee.dummy_input().pipeline_config(format_priority=["onnx"])
             .test_model.tiny_linear(op_config={"instance_count": 1}).as_function())
    probe = towhee.dummy_input().test_probe.towhee_rt_origin().as_function()
    return {"words": words, "model": model, "probe": probe}


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    pipes = _pipelines()
    root = tmp_path_factory.mktemp("user_ops")
    repos = {name: towhee.build_model_repo(pipe, root / "repo", model_name=name, overwrite=True)
             for name, pipe in pipes.items()}
    local = {"words": pipes["words"](TEXTS), "model": pipes["model"](FEATURES)}
    venv_bin = python_without_towhee_rt(root / "venv")
    env = {"PATH": f"{venv_bin}{os.pathsep}{os.environ.get('PATH', '')}"}
    cwd = os.getcwd()
    os.chdir(root)  # the stubs' sys.path holds their working directory: not one with towhee_rt/
    try:
        with towhee.serve(root / "repo", grpc_port=0, http_port=0, metrics_port=0,
                          env=env) as server:
            yield server, repos, local, root
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("protocol, mode", [("grpc", "infer"), ("http", "async_infer")])
def test_registered_function_and_class_served_equal_local(served, protocol, mode):
    server, _, local, _ = served
    url = server.grpc_url if protocol == "grpc" else server.http_url
    got = towhee.dc(TEXTS).remote(url=url, model_name="words", protocol=protocol, mode=mode,
                                  batch_size=2)
    assert len(got) == len(TEXTS)
    for served_vec, local_vec in zip(got, local["words"]):
        assert served_vec.dtype == np.float32 and np.array_equal(served_vec, local_vec)


def test_a_users_bad_input_is_reported_as_locally(served):
    server, _, _, _ = served
    results = towhee.dc(["a b", "   "]).remote(url=server.grpc_url, model_name="words",
                                               batch_size=2, errors="return")
    assert results[0].shape == (16,)
    assert isinstance(results[1], BadInputError)
    assert str(results[1]) == ("item 1: operator test_text.clean: no words; expected a text "
                               "with at least one word")


def test_user_model_operator_served_in_onnx_equals_local(served):
    server, repos, local, root = served
    model = repos["model"].models[0]
    config = triton_config.parse_pbtxt((root / "repo" / model.model_name / "config.pbtxt")
                                       .read_text())
    assert triton_config.read_parameters(config)["towhee_format"].startswith("onnx")
    assert (root / "repo" / model.model_name / "1" / model.files[0].name).suffix == ".onnx"
    got = towhee.dc(FEATURES).remote(url=server.grpc_url, model_name="model", batch_size=3)
    for served_vec, local_vec in zip(got, local["model"]):
        assert served_vec.shape == (4,)
        assert float(np.max(np.abs(served_vec - local_vec))) <= 1e-6


def test_served_model_imports_the_stand_in_never_towhee_rt(served):
    server, repos, _, root = served
    (reply,) = towhee.dc(["x"]).remote(url=server.grpc_url, model_name="probe")
    report = json.loads(np.asarray(reply).reshape(-1)[0])
    version = root / "repo" / repos["probe"].models[0].model_name / "1"
    assert report["towhee_rt"] == str(version / "towhee_rt" / "__init__.py")
    # Only what the stand-in maps, none of the library (towhee_rt.pipeline, .triton ...).
    assert set(report["submodules"]) <= {"towhee_rt.operator", "towhee_rt.backends",
                                         "towhee_rt.backends.operator_base",
                                         "towhee_rt.backends.model_operator",
                                         "towhee_rt.backends.function_operator"}
    assert report["prefix"] == str(root / "venv")  # the stubs ran in the venv without towhee_rt
