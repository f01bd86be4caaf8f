"""build_docker_image: the build context, the Dockerfile, and the error without a Docker engine;
the tritonserver flags shared by the Dockerfile, ``docker run`` and the host launcher."""
import json
import logging
import os

import pytest

import towhee_rt as towhee
from towhee_rt.errors import ConfigError, DockerError
from towhee_rt.triton import docker
from towhee_rt.triton.flags import CONTAINER_REPOSITORY, container_command, server_flags
from towhee_rt.triton.server import build_command, docker_command


@pytest.fixture(scope="module")
def pipe():
    return towhee.dummy_input().image_decode.cv2_rgb().as_function()


@pytest.mark.parametrize("cuda, tag", [("11.4", "21.10"), ("12.6", "24.10"), ("12.6.2", "24.10"),
                                       ("12.4", "24.05")])
def test_triton_tag_follows_the_cuda_version(cuda, tag):
    assert docker.triton_tag_for_cuda(cuda) == tag


def test_old_cuda_warns_about_python_and_unknown_cuda_fails(caplog):
    with caplog.at_level(logging.WARNING, logger="towhee_rt"):
        docker.triton_tag_for_cuda("11.4")
    assert "Python 3.8" in caplog.text and "cuda='12.6'" in caplog.text
    with pytest.raises(ConfigError, match="supported versions: 11.4"):
        docker.triton_tag_for_cuda("10.2")


def test_build_context_holds_repository_dockerfile_and_pins(pipe, tmp_path):
    context = docker.write_build_context(pipe, tmp_path / "ctx", cuda="12.6",
                                         model_name="image_embedding")
    dockerfile = (context / "Dockerfile").read_text()
    assert "FROM nvcr.io/nvidia/tritonserver:24.10-py3" in dockerfile
    assert "COPY models /workspace/models" in dockerfile
    assert _dockerfile_cmd(dockerfile) == container_command()
    assert (context / "models" / "image_embedding" / "config.pbtxt").is_file()
    pins = (context / "requirements.txt").read_text().split()
    assert any(p.startswith("torch==2.14.1") for p in pins)
    assert all("==" in p for p in pins)


def test_without_docker_engine_the_error_names_context_and_command(pipe, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setattr(docker, "docker_engine_available", lambda timeout=10.0: False)
    with pytest.raises(DockerError) as info:
        towhee.build_docker_image(pipe, image_name="image_embedding:v1", cuda="12.6",
                                  context_dir=str(tmp_path / "ctx"))
    message = str(info.value)
    assert str(tmp_path / "ctx") in message
    assert f"docker build -t image_embedding:v1 {tmp_path / 'ctx'}" in message
    assert (tmp_path / "ctx" / "Dockerfile").is_file()


def test_engine_probe_answers_false_on_this_machine_or_true_with_an_engine():
    # No engine runs on CI machines (only the client): the probe must not hang or raise.
    assert docker.docker_engine_available(timeout=10.0) in (True, False)


# ------------------------------------------------------------------ one set of server flags
def _dockerfile_cmd(dockerfile: str) -> list:
    (line,) = [line for line in dockerfile.splitlines() if line.startswith("CMD ")]
    return json.loads(line[len("CMD "):])  # exec form: a JSON array, no shell


def test_dockerfile_cmd_is_the_container_command():
    cmd = _dockerfile_cmd(docker.render_dockerfile("24.10", "12.6", "pipeline"))
    assert cmd == container_command()
    assert cmd == ["tritonserver"] + server_flags(CONTAINER_REPOSITORY, host="0.0.0.0",
                                                  grpc_port=8001, http_port=8000,
                                                  metrics_port=8002, gpu_metrics=True)
    for flag in ("--model-repository=/workspace/models", "--grpc-address=0.0.0.0",
                 "--http-address=0.0.0.0", "--metrics-address=0.0.0.0",
                 "--disable-auto-complete-config", "--strict-readiness=true",
                 "--exit-timeout-secs=5",
                 "--backend-config=python,shm-default-byte-size=16777216"):
        assert flag in cmd


def test_host_and_docker_commands_use_the_same_flags():
    ports = dict(grpc_port=7001, http_port=7000, metrics_port=7002)
    host = build_command("/bin/tritonserver", "repo", backend_directory="/b", log_verbose=1,
                         gpu_metrics=False, extra_args=["--id=x"], **ports)
    assert host == (["/bin/tritonserver"]
                    + server_flags(os.path.abspath("repo"), host="127.0.0.1", log_verbose=1,
                                   gpu_metrics=False, **ports)
                    + ["--backend-directory=/b", "--id=x"])
    run = docker_command("img:v1", model_repository="/data/repo", log_verbose=1, **ports)
    image_at = run.index("img:v1")
    assert run[image_at + 1:] == ["tritonserver"] + server_flags(
        CONTAINER_REPOSITORY, host="127.0.0.1", log_verbose=1, **ports)

    def names(argv):  # flag names, values aside
        return [arg.split("=", 1)[0] for arg in argv if arg.startswith("--")]

    assert names(host[1:-2]) == names(run[image_at + 2:]) == names(container_command()[1:])


def test_server_flags_take_address_ports_and_levels():
    flags = server_flags("/m", host="10.0.0.1", grpc_port=9001, http_port=9000,
                         metrics_port=9002, log_verbose=2, gpu_metrics=False)
    for flag in ("--model-repository=/m", "--grpc-address=10.0.0.1", "--grpc-port=9001",
                 "--http-address=10.0.0.1", "--http-port=9000", "--metrics-address=10.0.0.1",
                 "--metrics-port=9002", "--log-verbose=2", "--allow-gpu-metrics=false"):
        assert flag in flags
