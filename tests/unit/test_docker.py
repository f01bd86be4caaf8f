"""build_docker_image: the build context, the Dockerfile, and the error without a Docker engine."""
import logging

import pytest

import towhee_rt as towhee
from towhee_rt.errors import ConfigError, DockerError
from towhee_rt.triton import docker


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
    assert 'CMD ["tritonserver", "--model-repository=/workspace/models"]' in dockerfile
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
