"""The image's entrypoint script (rendered by build_docker_image), run with a stand-in
tritonserver that prints its argv: the keys from the environment, the command given to the image
(Towhee's guide) merged with towhee_rt's flags, refused flags, the container paths, and the HTTP
body limit at the front door (tests/integration/test_entrypoint_real.py runs it around the real
tritonserver)."""
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

import towhee_rt as towhee
from towhee_rt.triton import docker, procs
from towhee_rt.triton.flags import CONTAINER_REPOSITORY, container_command, server_flags

from .entrypoint_stand_in import rendered_entrypoint


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
    return rendered_entrypoint(tmp_path_factory.mktemp("entrypoint"), _FAKE_TRITONSERVER)


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
