"""build_docker_image: the build context, the Dockerfile, the supervisor package, the base
image's tag (chosen from the security bulletins), and the error without a Docker engine; the
tritonserver flags shared by the entrypoint, ``docker run`` and the host launcher; the
supervisor's pure helpers (tests/integration/test_recovery.py runs it for real; the entrypoint
script: test_entrypoint.py)."""
import json
import logging
import os

import pytest

import towhee_rt as towhee
from towhee_rt import shipped
from towhee_rt.errors import ConfigError, DockerError
from towhee_rt.op_config import DEFAULT_MAX_REQUEST_BYTES
from towhee_rt.triton import bulletins, docker, procs
from towhee_rt.triton.commands import build_command, docker_command
from towhee_rt.triton.flags import (ADMIN_APIS, CONTAINER_REPOSITORY, EXIT_TIMEOUT_SECS,
                                    INFERENCE_APIS, STOP_TIMEOUT_SECS, container_command,
                                    restriction_flags, server_flags)
from towhee_rt.triton.supervisor import only_pinned_left
from towhee_rt.triton.supervisor_main import admin_endpoint

@pytest.fixture(scope="module")
def pipe():
    return towhee.dummy_input().image_decode.cv2_rgb().as_function()


# ------------------------------------------------------------------------- the base image
def test_default_base_fixes_every_published_bulletin():
    assert docker.DEFAULT_TRITON_TAG == bulletins.newest_safe_release() == "26.07"
    assert docker.resolve_triton_tag() == "26.07"
    assert bulletins.open_bulletins(docker.DEFAULT_TRITON_TAG) == []
    assert bulletins.check_base(docker.DEFAULT_TRITON_TAG, explicit=False) == []


@pytest.mark.parametrize("cuda, tag", [("12.9", "25.07"), ("13.0.2", "25.10"), ("11.4", "21.10")])
def test_cuda_whose_release_has_open_bulletins_is_refused_with_the_way_out(cuda, tag):
    with pytest.raises(bulletins.VulnerableBaseError) as info:
        docker.triton_tag_for_cuda(cuda)
    message = str(info.value)
    key = ".".join(cuda.split(".")[:2])
    assert f"newest tritonserver recorded for CUDA {key} is {tag}" in message
    assert "5875" in message and "CVE-2026-24206" in message  # the open bulletins are named
    assert f"triton_tag={tag!r}" in message and "26.07" in message


def test_explicit_old_tag_is_allowed_with_warnings_naming_what_is_open(caplog):
    with caplog.at_level(logging.WARNING, logger="towhee_rt"):
        assert docker.resolve_triton_tag(triton_tag="21.10") == "21.10"
    assert "CVE-2025-23310" in caplog.text and "5875" in caplog.text
    assert "can be bypassed" in caplog.text  # before 26.05 the keys are no boundary
    assert "Python 3.8" in caplog.text  # too old for the pinned packages as well
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="towhee_rt"):
        assert docker.resolve_triton_tag(cuda="11.4", triton_tag="26.07") == "26.07"
    assert caplog.text == ""  # triton_tag wins over cuda; a safe release warns of nothing
    with caplog.at_level(logging.WARNING, logger="towhee_rt"):
        assert docker.resolve_triton_tag(triton_tag="nvcr.io/nvidia/tritonserver:26.08-py3") \
            == "26.08"


def test_unknown_cuda_and_malformed_tags_fail():
    with pytest.raises(ConfigError, match=r"no known tritonserver image for CUDA '10.2'"):
        docker.triton_tag_for_cuda("10.2")
    with pytest.raises(ConfigError):
        docker.resolve_triton_tag(triton_tag="latest")


def test_build_context_holds_repository_dockerfile_entrypoint_and_pins(pipe, tmp_path):
    context = docker.write_build_context(pipe, tmp_path / "ctx", model_name="image_embedding")
    dockerfile = (context / "Dockerfile").read_text()
    assert "FROM nvcr.io/nvidia/tritonserver:26.07-py3" in dockerfile
    assert "(the newest release fixing every published NVIDIA security bulletin)" in dockerfile
    assert "COPY models /workspace/models" in dockerfile
    assert f"COPY {docker.ENTRYPOINT_NAME} {docker.ENTRYPOINT_PATH}" in dockerfile
    assert f"COPY {docker.SUPERVISOR_NAME} {docker.SUPERVISOR_PATH}" in dockerfile
    assert f"--stop-timeout {STOP_TIMEOUT_SECS}" in dockerfile
    # NVIDIA's entrypoint, then ours, and no CMD: a trailing command reaches the script.
    assert _dockerfile_instruction(dockerfile, "ENTRYPOINT") == [
        "/opt/nvidia/nvidia_entrypoint.sh", "/bin/bash", docker.ENTRYPOINT_PATH]
    assert not [line for line in dockerfile.splitlines() if line.startswith("CMD")]
    script = context / docker.ENTRYPOINT_NAME
    assert script.read_text() == docker.render_entrypoint("image_embedding",
                                                          DEFAULT_MAX_REQUEST_BYTES)
    assert os.access(script, os.X_OK)
    # One supervisor: its modules, copied as they are (they need the standard library only).
    supervisor = context / docker.SUPERVISOR_NAME
    assert set(shipped.SUPERVISOR_MODULES) == {"procs", "admin", "supervisor", "command_merge",
                                               "supervisor_main"}
    assert sorted(path.name for path in supervisor.iterdir()) == sorted(
        [f"{name}.py" for name in shipped.SUPERVISOR_MODULES] + ["__init__.py", "__main__.py"])
    for file in shipped.SUPERVISOR.files:
        assert (supervisor / file.name).read_bytes() == file.source.read_bytes()
    assert os.path.dirname(docker.SUPERVISOR_PATH) == os.path.dirname(docker.ENTRYPOINT_PATH)
    assert (context / "models" / "image_embedding" / "config.pbtxt").is_file()
    pins = (context / "requirements.txt").read_text().split()
    assert any(p.startswith("torch==2.14.1") for p in pins)
    assert all("==" in p for p in pins)


def test_without_docker_engine_the_error_names_context_and_command(pipe, tmp_path,
                                                                    monkeypatch):
    monkeypatch.setattr(docker, "docker_engine_available", lambda timeout=10.0: False)
    with pytest.raises(DockerError) as info:
        towhee.build_docker_image(pipe, image_name="image_embedding:v1",
                                  context_dir=str(tmp_path / "ctx"))
    message = str(info.value)
    assert str(tmp_path / "ctx") in message
    assert f"docker build -t image_embedding:v1 {tmp_path / 'ctx'}" in message
    dockerfile = (tmp_path / "ctx" / "Dockerfile").read_text()
    assert f"FROM nvcr.io/nvidia/tritonserver:{docker.DEFAULT_TRITON_TAG}-py3" in dockerfile


def test_build_refuses_an_old_cuda_before_writing_anything(pipe, tmp_path):
    with pytest.raises(ConfigError, match="lacks the fixes"):
        towhee.build_docker_image(pipe, image_name="x:v1", cuda="11.4",
                                  context_dir=str(tmp_path / "ctx"))
    assert not (tmp_path / "ctx").exists()


def test_engine_probe_answers_false_on_this_machine_or_true_with_an_engine():
    # No engine runs on CI machines (only the client): the probe must not hang or raise.
    assert docker.docker_engine_available(timeout=10.0) in (True, False)


# ------------------------------------------------------------------ one set of server flags
def _dockerfile_instruction(dockerfile: str, name: str) -> list:
    (line,) = [line for line in dockerfile.splitlines() if line.startswith(name + " ")]
    return json.loads(line[len(name) + 1:])  # exec form: a JSON array, no shell


def test_container_command_is_server_flags_on_all_interfaces():
    cmd = container_command(admin_key="adm")
    assert cmd == ["tritonserver"] + server_flags(CONTAINER_REPOSITORY, host="0.0.0.0",
                                                  grpc_port=8001, http_port=8000,
                                                  metrics_port=8002, gpu_metrics=True,
                                                  admin_key="adm")
    for flag in ("--model-repository=/workspace/models", "--grpc-address=0.0.0.0",
                 "--http-address=0.0.0.0", "--metrics-address=0.0.0.0",
                 "--disable-auto-complete-config", "--strict-readiness=true",
                 "--model-control-mode=explicit", "--load-model=*",
                 f"--exit-timeout-secs={EXIT_TIMEOUT_SECS}",
                 "--backend-config=python,shm-default-byte-size=16777216"):
        assert flag in cmd
    assert EXIT_TIMEOUT_SECS >= 15 and STOP_TIMEOUT_SECS > EXIT_TIMEOUT_SECS


def test_host_and_docker_commands_use_the_same_flags():
    ports = dict(grpc_port=7001, http_port=7000, metrics_port=7002)
    keys = dict(api_key="k1", admin_key="a1")
    host = build_command("/bin/tritonserver", "repo", backend_directory="/b", log_verbose=1,
                         gpu_metrics=False, extra_args=["--id=x"], **ports, **keys)
    assert host == (["/bin/tritonserver"]
                    + server_flags(os.path.abspath("repo"), host="127.0.0.1", log_verbose=1,
                                   gpu_metrics=False, **ports, **keys)
                    + ["--backend-directory=/b", "--id=x"])
    run = docker_command("img:v1", model_repository="/data/repo", log_verbose=1, **ports,
                         **keys)
    image_at = run.index("img:v1")
    assert run[image_at + 1:] == ["tritonserver"] + server_flags(
        CONTAINER_REPOSITORY, host="127.0.0.1", log_verbose=1, **ports, **keys)

    def names(argv):  # flag names, values aside
        return [arg.split("=", 1)[0] for arg in argv if arg.startswith("--")]

    assert names(host[1:-2]) == names(run[image_at + 2:]) == names(container_command(**keys)[1:])
    # The host launcher names its shared-memory regions; containers have their own /dev/shm.
    named = build_command("/bin/tritonserver", "repo", shm_region_prefix="towhee_rt_1_0_",
                          **ports, **keys)
    assert named[-1] == "--backend-config=python,shm-region-prefix-name=towhee_rt_1_0_"


def test_server_flags_take_address_ports_and_levels():
    flags = server_flags("/m", host="10.0.0.1", grpc_port=9001, http_port=9000,
                         metrics_port=9002, log_verbose=2, gpu_metrics=False)
    for flag in ("--model-repository=/m", "--grpc-address=10.0.0.1", "--grpc-port=9001",
                 "--http-address=10.0.0.1", "--http-port=9000", "--metrics-address=10.0.0.1",
                 "--metrics-port=9002", "--log-verbose=2", "--allow-gpu-metrics=false"):
        assert flag in flags


# ------------------------------------------------------------------------- access flags
def test_admin_apis_are_always_restricted_and_inference_only_with_a_key():
    setting = f"{','.join(ADMIN_APIS)}:towhee-admin-key=a1"
    assert restriction_flags(admin_key="a1") == [f"--http-restricted-api={setting}",
                                                 f"--grpc-restricted-protocol={setting}"]
    with_key = restriction_flags(api_key="k1", admin_key="a1")
    assert with_key[2:] == [
        f"--http-restricted-api={','.join(INFERENCE_APIS)}:towhee-api-key=k1",
        f"--grpc-restricted-protocol={','.join(INFERENCE_APIS)}:towhee-api-key=k1"]
    assert INFERENCE_APIS == ("inference", "model-config")
    assert set(ADMIN_APIS) == {"shared-memory", "model-repository", "statistics", "trace",
                               "logging"}
    # Health and metadata stay open for probes and for clients reading the model's inputs.
    assert not {"health", "metadata"} & set(ADMIN_APIS + INFERENCE_APIS)


def test_without_an_admin_key_each_call_draws_a_random_one():
    first, second = restriction_flags(), restriction_flags()
    assert first != second
    key = first[0].rsplit("=", 1)[1]
    assert len(key) >= 40 and first[1].endswith(f"towhee-admin-key={key}")


@pytest.mark.parametrize("key, problem", [("", "is empty"), ("a b", "printable ASCII"),
                                          ("k\n", "printable ASCII"), ("kä", "printable ASCII"),
                                          (123, "must be a string")])
def test_bad_keys_are_refused(key, problem):
    with pytest.raises(ConfigError, match=problem):
        server_flags("/m", api_key=key)


# ------------------------------------------------------------------ supervisor helpers
def test_parse_stub_reads_model_instance_and_region_from_the_stub_argv():
    argv = ["/x/backends/python/triton_python_backend_stub", "/r/pipeline_1_timm/1/model.py",
            "towhee_rt_7_0_9f3e", "16777216", "16777216", "4242", "/x/backends/python", "336",
            "pipeline_1_timm_0_1", "DEFAULT"]
    assert procs.parse_stub(99, argv) == procs.Stub(99, "pipeline_1_timm", "pipeline_1_timm_0_1",
                                              "towhee_rt_7_0_9f3e")
    assert procs.parse_stub(99, ["/usr/bin/python3", "x.py", "y"]) is None
    assert procs.parse_stub(99, []) is None  # a zombie's cmdline


@pytest.mark.parametrize("status, text", [(9, "killed by SIGKILL"), (3 << 8, "exited with code 3"),
                                          (None, "exited")])
def test_describe_exit(status, text):
    stat = procs.ProcStat(1, "stub", "Z", 1, 1, 1, status)
    assert procs.describe_exit(stat) == text


def test_admin_endpoint_takes_port_and_keys_from_the_tritonserver_argv():
    argv = container_command(api_key="api", admin_key="adm")
    url, headers = admin_endpoint(argv)
    assert url == "127.0.0.1:8000"
    assert headers == {"towhee-admin-key": "adm", "towhee-api-key": "api"}
    url, headers = admin_endpoint(server_flags("/m", host="10.1.2.3", http_port=9000,
                                                  admin_key="adm"))
    assert url == "10.1.2.3:9000" and headers == {"towhee-admin-key": "adm"}


def test_shm_prefix_names_the_owner_and_counts():
    first, second = procs.shm_prefix(), procs.shm_prefix()
    assert first.startswith(f"towhee_rt_{os.getpid()}_") and first.endswith("_")
    assert first != second
    assert procs.shm_prefix(1, 0) == "towhee_rt_1_0_"
    with pytest.raises(ValueError):
        procs.remove_regions("")


def test_only_pinned_left_reads_a_stopping_server_log():
    log = ('Signal (15) received.\n"Waiting for in-flight requests to complete."\n'
           '"All models are stopped, unloading models"\n'
           '"Timeout 15: Found 3 live models and 0 in-flight non-inference requests"\n')
    assert not only_pinned_left(log, 1)
    later = log + '"Timeout 14: Found 1 live models and 0 in-flight non-inference requests"\n'
    assert only_pinned_left(later, 1) and not only_pinned_left(later, 0)
    assert not only_pinned_left('"Timeout 3: Found 1 live models"', 1)  # still draining
