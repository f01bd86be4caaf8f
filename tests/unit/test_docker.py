"""build_docker_image: the build context, the Dockerfile, the entrypoint and supervisor
scripts, the base image's tag (releases with the 2025 security fixes), and the error without a
Docker engine; the tritonserver flags shared by the entrypoint, ``docker run`` and the host
launcher; the supervisor's pure helpers (tests/integration/test_recovery.py runs it for real)."""
import json
import logging
import os
import shutil
import subprocess
import sys
import textwrap

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


# ---------------------------------------------------------------- the entrypoint script
BASH = shutil.which("bash")
_FAKE_TRITONSERVER = textwrap.dedent("""\
    #!/bin/sh
    # Stands in for tritonserver: its arguments one per line, then the TOWHEE_RT_ variables left.
    basename "$0"
    for arg in "$@"; do printf '%s\\n' "$arg"; done
    printf 'ENV:%s\\n' "$(env | grep '^TOWHEE_RT_' | tr '\\n' ' ')"
""")


@pytest.fixture(scope="module")
def entrypoint(tmp_path_factory):
    """The rendered script with the supervisor beside it, and a PATH whose tritonserver prints
    its arguments."""
    root = tmp_path_factory.mktemp("entrypoint")
    script = root / docker.ENTRYPOINT_NAME
    script.write_text(docker.render_entrypoint("pipeline"))
    docker.write_supervisor(root)
    fake = root / "bin" / "tritonserver"
    fake.parent.mkdir()
    fake.write_text(_FAKE_TRITONSERVER)
    fake.chmod(0o755)
    return script, f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}"


def _run_entrypoint(entrypoint, env, *args):
    """Run the script; tritonserver's argv without the supervisor's region-prefix flag (the
    last one, checked here), and the TOWHEE_RT_ variables tritonserver was given."""
    script, path = entrypoint
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TOWHEE_RT_")}
    result = subprocess.run([BASH, str(script), *args], env={**clean, "PATH": path, **env},
                            capture_output=True, text=True, timeout=30)
    lines = result.stdout.splitlines()
    argv = [line for line in lines if not line.startswith("ENV:")]
    left = [line for line in lines if line.startswith("ENV:")]
    if argv:
        assert argv[0] == "tritonserver"
        assert argv[-1].startswith(procs.SHM_PREFIX_FLAG + "towhee_rt_"), argv
        assert "tritonserver exited (code 0)" in result.stderr, result.stderr
        argv = argv[:-1]
    return result, argv, left


@pytest.mark.skipif(BASH is None, reason="no bash here")
def test_entrypoint_is_valid_bash_and_holds_the_server_flags(entrypoint):
    script, _ = entrypoint
    check = subprocess.run([BASH, "-n", str(script)], capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stderr
    text = script.read_text()
    flags = server_flags(CONTAINER_REPOSITORY, host="0.0.0.0", admin_key="x")[:-2]
    assert flags[0] == f"--model-repository={CONTAINER_REPOSITORY}"
    for flag in flags[1:]:
        assert flag in text  # every flag except the repository and the keys, verbatim
    assert text.count('--model-repository="$model_repository"') == 2
    assert f'model_repository="${{TOWHEE_RT_MODEL_REPOSITORY:-{CONTAINER_REPOSITORY}}}"' in text
    assert text.count('towhee-admin-key="$admin_key"') == 4  # http + grpc, in both branches
    assert text.count('towhee-api-key="$api_key"') == 2
    assert 'exec python3 "$supervisor" run --user-args "$user_args" -- "$@"' in text
    assert "@@" not in text


@pytest.mark.skipif(BASH is None, reason="no bash here")
def test_entrypoint_runs_container_command_with_the_keys_from_the_environment(entrypoint,
                                                                            tmp_path):
    result, argv, left = _run_entrypoint(
        entrypoint, {"TOWHEE_RT_API_KEY": "k:e=y,1", "TOWHEE_RT_ADMIN_KEY": "adm"},
        "--log-info=true")
    assert result.returncode == 0, result.stderr
    assert argv == container_command(api_key="k:e=y,1", admin_key="adm") + ["--log-info=true"]
    assert left == ["ENV:"]  # the keys are not handed down to tritonserver and its stubs

    key_file = tmp_path / "api_key"
    key_file.write_text("  from-a-file\n\n")
    result, argv, _ = _run_entrypoint(entrypoint, {"TOWHEE_RT_API_KEY_FILE": str(key_file),
                                                   "TOWHEE_RT_ADMIN_KEY": "adm"})
    assert result.returncode == 0, result.stderr
    assert argv == container_command(api_key="from-a-file", admin_key="adm")


@pytest.mark.skipif(BASH is None, reason="no bash here")
def test_entrypoint_without_keys_opens_inference_and_closes_admin(entrypoint):
    result, argv, _ = _run_entrypoint(entrypoint, {})
    assert result.returncode == 0, result.stderr
    assert "inference is open" in result.stderr
    admin_key = argv[-1].rsplit("=", 1)[1]
    assert len(admin_key) == 64 and admin_key not in result.stderr
    assert argv == container_command(admin_key=admin_key)
    again = _run_entrypoint(entrypoint, {})[1]
    assert again[-1] != argv[-1]  # a new random admin key per start


@pytest.mark.skipif(BASH is None, reason="no bash here")
@pytest.mark.parametrize("env, message", [
    ({"TOWHEE_RT_API_KEY": ""}, "TOWHEE_RT_API_KEY is set but empty"),
    ({"TOWHEE_RT_API_KEY": " a b "}, "printable ASCII characters only"),
    ({"TOWHEE_RT_API_KEY": "x", "TOWHEE_RT_API_KEY_FILE": "/etc/hostname"}, "not both"),
    ({"TOWHEE_RT_ADMIN_KEY_FILE": "/no/such/file"}, "cannot read '/no/such/file'"),
], ids=["empty", "spaces", "both", "missing-file"])
def test_entrypoint_refuses_bad_keys_without_starting(entrypoint, env, message):
    result, argv, _ = _run_entrypoint(entrypoint, env)
    assert result.returncode == 64 and message in result.stderr
    assert argv == []


@pytest.mark.skipif(BASH is None, reason="no bash here")
def test_entrypoint_without_the_supervisor_runs_tritonserver_and_says_so(tmp_path):
    script = tmp_path / docker.ENTRYPOINT_NAME
    script.write_text(docker.render_entrypoint("pipeline"))
    fake = tmp_path / "bin" / "tritonserver"
    fake.parent.mkdir()
    fake.write_text(_FAKE_TRITONSERVER)
    fake.chmod(0o755)
    path = f"{fake.parent}{os.pathsep}{os.environ.get('PATH', '')}"
    result = subprocess.run([BASH, str(script)], env={"PATH": path, "TOWHEE_RT_ADMIN_KEY": "a"},
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    assert "tritonserver runs unsupervised" in result.stderr
    argv = [line for line in result.stdout.splitlines() if not line.startswith("ENV:")]
    assert argv == container_command(admin_key="a")


# ------------------------------------------- a command given to the image (Towhee's guide)
#: Towhee's guide: docker run -td --gpus=all --shm-size=1g --net=host image_embedding:v1 ...
GUIDE_COMMAND = ["tritonserver", "--model-repository=/workspace/models", "--grpc-port=8001"]


@pytest.fixture(scope="module")
def image_entrypoint(entrypoint, tmp_path_factory):
    """The image's ENTRYPOINT as the Dockerfile has it, with a stand-in for NVIDIA's script
    (which execs its arguments) and the script's container path mapped to the rendered one."""
    script, path = entrypoint
    nvidia = tmp_path_factory.mktemp("nvidia") / "nvidia_entrypoint.sh"
    nvidia.write_text('#!/bin/bash\necho "== stand-in for NVIDIA\'s entrypoint =="\nexec "$@"\n')
    nvidia.chmod(0o755)
    mapping = {docker.NVIDIA_ENTRYPOINT: str(nvidia), docker.ENTRYPOINT_PATH: str(script)}
    return [mapping.get(word, word) for word in docker.IMAGE_ENTRYPOINT], path


def _run_image(image_entrypoint, env, *command):
    """``docker run IMAGE COMMAND...`` without Docker: (result, tritonserver's argv or [])."""
    prefix, path = image_entrypoint
    clean = {k: v for k, v in os.environ.items() if not k.startswith("TOWHEE_RT_")}
    result = subprocess.run([*prefix, *command], env={**clean, "PATH": path, **env},
                            capture_output=True, text=True, timeout=30)
    lines = result.stdout.splitlines()
    assert lines[:1] == ["== stand-in for NVIDIA's entrypoint =="], result.stdout
    argv = [line for line in lines[1:] if not line.startswith("ENV:")]
    if argv and argv[0] == "tritonserver":
        assert argv[-1].startswith(procs.SHM_PREFIX_FLAG + "towhee_rt_"), argv
        assert "tritonserver exited (code 0)" in result.stderr, result.stderr  # supervised
        argv = argv[:-1]
    return result, argv


@pytest.mark.skipif(BASH is None, reason="no bash here")
def test_the_guides_command_keeps_flags_keys_and_supervisor(image_entrypoint):
    keys = {"TOWHEE_RT_API_KEY": "k1", "TOWHEE_RT_ADMIN_KEY": "adm"}
    result, argv = _run_image(image_entrypoint, keys, *GUIDE_COMMAND)
    assert result.returncode == 0, result.stderr
    # The guide's values are towhee_rt's own: exactly towhee_rt's command.
    assert argv == container_command(api_key="k1", admin_key="adm")
    # The user's repository and port win, in place; everything else stays.
    result, argv = _run_image(image_entrypoint, keys, "tritonserver",
                              "--model-repository=/data/models", "--grpc-port=9001",
                              "--log-verbose", "1", "--id=mine")
    assert result.returncode == 0, result.stderr
    expected = container_command(api_key="k1", admin_key="adm")
    expected = [{"--model-repository=/workspace/models": "--model-repository=/data/models",
                 "--grpc-port=8001": "--grpc-port=9001"}.get(arg, arg) for arg in expected]
    at = expected.index("--log-verbose=0")
    expected[at:at + 1] = ["--log-verbose", "1"]
    assert argv == expected + ["--id=mine"]
    # No arguments: towhee_rt's command; flags only: merged the same way.
    assert _run_image(image_entrypoint, keys)[1] == container_command(api_key="k1",
                                                                      admin_key="adm")
    result, argv = _run_image(image_entrypoint, {"TOWHEE_RT_ADMIN_KEY": "adm"},
                              "--http-port=9000")
    assert "inference is open" in result.stderr
    assert argv == [a.replace("--http-port=8000", "--http-port=9000")
                    for a in container_command(admin_key="adm")]


@pytest.mark.skipif(BASH is None, reason="no bash here")
@pytest.mark.parametrize("flag, reason", [
    ("--http-restricted-api=inference:x=y", "the API keys are set by towhee_rt"),
    ("--grpc-restricted-protocol=model-repository:x=y", "the API keys are set by towhee_rt"),
    ("--http-restricted", "abbreviates --http-restricted-api"),
    ("--allow-sagemaker=true", "SageMaker endpoint"),
    ("--allow-vertex-ai=1", "Vertex AI endpoint"),
    ("--model-control-mode=poll", "explicit model control"),
    ("--allow-http=false", "over HTTP"),
    ("--http-header-forward-pattern=towhee-.*", "hand the keys to the model code"),
], ids=lambda value: value.split("=")[0] if value.startswith("--") else None)
def test_a_flag_that_would_undo_a_protection_is_refused(image_entrypoint, flag, reason):
    result, argv = _run_image(image_entrypoint, {"TOWHEE_RT_API_KEY": "k1"}, *GUIDE_COMMAND,
                              flag)
    assert result.returncode == 2, result.stderr
    assert argv == [] and "tritonserver exited" not in result.stderr
    assert "towhee_rt entrypoint: " in result.stderr and reason in result.stderr
    assert "x=y" not in result.stderr  # a refused restriction's value is not echoed


@pytest.mark.skipif(BASH is None, reason="no bash here")
def test_any_other_command_runs_as_given(image_entrypoint):
    result, argv = _run_image(image_entrypoint, {"TOWHEE_RT_API_KEY": ""},  # a bad key: unread
                              "bash", "-c", "echo hi; echo $TOWHEE_RT_API_KEY-left")
    assert result.returncode == 0, result.stderr
    assert argv == ["hi", "-left"] and result.stderr == ""


@pytest.mark.skipif(BASH is None, reason="no bash here")
def test_paths_of_the_container_can_be_overridden(image_entrypoint):
    result, argv = _run_image(image_entrypoint, {"TOWHEE_RT_ADMIN_KEY": "adm",
                                                 "TOWHEE_RT_MODEL_REPOSITORY": "/r",
                                                 "TOWHEE_RT_BACKEND_DIRECTORY": "/b"})
    assert result.returncode == 0, result.stderr
    assert argv == ["tritonserver", "--model-repository=/r"] + container_command(
        admin_key="adm")[2:] + ["--backend-directory=/b"]


@pytest.mark.skipif(BASH is None, reason="no bash here")
def test_without_the_supervisor_a_given_command_is_refused(tmp_path):
    script = tmp_path / docker.ENTRYPOINT_NAME
    script.write_text(docker.render_entrypoint("pipeline"))
    result = subprocess.run([BASH, str(script), *GUIDE_COMMAND], capture_output=True,
                            text=True, timeout=30, env={"PATH": os.environ["PATH"]})
    assert result.returncode == 64
    assert "cannot merge the command given with towhee_rt's flags" in result.stderr


def test_merge_reads_both_forms_abbreviations_and_backend_settings():
    from towhee_rt.triton.command_merge import RefusedFlag, merge_command

    base = container_command(admin_key="adm")
    merged = merge_command(base, ["/opt/tritonserver/bin/tritonserver", "--model-store", "/d",
                                  "--model-repository=/e", "--grpc-p=9",
                                  "--backend-config=python,shm-default-byte-size=1"])
    assert merged[:4] == ["/opt/tritonserver/bin/tritonserver", "--model-store", "/d",
                          "--model-repository=/e"]  # both replace /workspace/models
    assert "--grpc-port=8001" not in merged and "--grpc-p=9" in merged
    assert "--backend-config=python,shm-default-byte-size=1" in merged
    assert "--backend-config=python,shm-default-byte-size=16777216" not in merged
    assert "--backend-config=python,shm-growth-byte-size=16777216" in merged
    assert merged[-2:] == base[-2:]  # the restrictions stay
    # Values that keep the protection are accepted.
    kept = merge_command(base, ["--allow-sagemaker=false", "--model-control-mode", "explicit",
                                "--http-header-forward-pattern=x-trace-.*"])
    assert kept[-2:] == ["--allow-sagemaker=false", "--http-header-forward-pattern=x-trace-.*"]
    at = kept.index("--model-control-mode")
    assert kept[at + 1] == "explicit" and "--model-control-mode=explicit" not in kept
    for words in (["--allow-sagemaker", "on"], ["--grpc-restricted-protocol", "a:b=c"],
                  ["--allow-vert=true"]):
        with pytest.raises(RefusedFlag):
            merge_command(base, words)
    assert merge_command(base, []) == base


def test_supervisor_script_needs_only_the_standard_library(tmp_path):
    package = docker.write_supervisor(tmp_path)
    # The image runs the directory; `-m` works from its parent (-E -s: no PYTHONPATH, no
    # user site, so that only the current directory is added).
    for argv in (["-I", str(package)], ["-E", "-s", "-m", package.name]):
        result = subprocess.run([sys.executable, "-S", *argv, "--help"], capture_output=True,
                                text=True, timeout=30, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        assert "run" in result.stdout and "watchdog" in result.stdout


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


_FAKE_NEWER_TRITONSERVER = textwrap.dedent("""\
    #!/bin/sh
    # Stands in for a newer tritonserver: --help lists the HTTP body limit; else its argv.
    if [ "$1" = "--help" ]; then echo "  --http-max-input-size <integer>"; exit 0; fi
    basename "$0"
    for arg in "$@"; do printf '%s\\n' "$arg"; done
""")


@pytest.mark.skipif(BASH is None, reason="no bash here")
def test_front_door_body_limit_only_where_the_release_offers_it(tmp_path):
    script = tmp_path / docker.ENTRYPOINT_NAME
    script.write_text(docker.render_entrypoint("pipeline", max_request_bytes=1000))
    docker.write_supervisor(tmp_path)
    flag = f"--http-max-input-size={1000 + docker.HTTP_BODY_HEADROOM}"
    for fake, offered in ((_FAKE_NEWER_TRITONSERVER, True), (_FAKE_TRITONSERVER, False)):
        bin_dir = tmp_path / f"bin-{offered}"
        bin_dir.mkdir()
        (bin_dir / "tritonserver").write_text(fake)
        (bin_dir / "tritonserver").chmod(0o755)
        path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        result, argv, _ = _run_entrypoint((script, path), {"TOWHEE_RT_ADMIN_KEY": "adm"})
        assert result.returncode == 0, result.stderr
        assert (flag in argv) is offered, argv
        if offered:  # towhee_rt's flags, then the limit
            assert argv == container_command(admin_key="adm") + [flag]
        # the user's own value wins over the pipeline's
        result, argv, _ = _run_entrypoint((script, path), {"TOWHEE_RT_ADMIN_KEY": "adm"},
                                          "tritonserver", "--http-max-input-size=5")
        assert result.returncode == 0, result.stderr
        assert "--http-max-input-size=5" in argv and flag not in argv


def test_build_context_sets_the_pipelines_limit(tmp_path):
    pipe = (towhee.dummy_input().pipeline_config(max_request_bytes=1 << 20,
                                                 max_item_bytes=1 << 19)
            .image_decode.cv2_rgb().as_function())
    context = docker.write_build_context(pipe, tmp_path / "ctx")
    text = (context / docker.ENTRYPOINT_NAME).read_text()
    assert f'max_input_bytes="{(1 << 20) + docker.HTTP_BODY_HEADROOM}"' in text
