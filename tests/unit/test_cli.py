"""The command line: ``towhee-rt``, ``python -m towhee_rt`` and the ``python -m towhee_rt.serve``
shim (no server is started here; tests/integration/test_server.py serves through the CLI)."""
from __future__ import annotations

import configparser
import os
import subprocess
import sys
import textwrap
from importlib import metadata
from pathlib import Path
from typing import List

import pytest

from towhee_rt import cli, cli_serve

REPO_ROOT = Path(__file__).resolve().parents[2]


def _python(args: List[str], timeout: float = 120) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.run([sys.executable, *args], env=env, cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=timeout)


@pytest.mark.parametrize("args, usage", [
    (["-m", "towhee_rt.serve", "--help"], "usage: python -m towhee_rt.serve "),
    (["-m", "towhee_rt", "--help"], "usage: python -m towhee_rt "),
    (["-m", "towhee_rt", "serve", "--help"], "usage: python -m towhee_rt serve "),
    (["-m", "towhee_rt", "quickstart", "--help"], "usage: python -m towhee_rt quickstart "),
], ids=["serve-shim", "package", "package-serve", "package-quickstart"])
def test_help_without_runtime_warning(args, usage):
    result = _python(args)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(usage), result.stdout
    # runpy warns "'towhee_rt.serve' found in sys.modules ..." when the package imports the
    # module that -m is about to run.
    assert "RuntimeWarning" not in result.stderr, result.stderr
    assert "found in sys.modules" not in result.stderr, result.stderr


def test_package_help_lists_the_commands():
    result = _python(["-m", "towhee_rt", "--help"])
    assert "serve" in result.stdout and "quickstart" in result.stdout


def test_usage_errors_exit_2_and_say_what_is_missing():
    no_repo = _python(["-m", "towhee_rt.serve"])
    assert no_repo.returncode == 2
    assert "the model repository is required (unless --docker IMAGE is given)" in no_repo.stderr
    no_images = _python(["-m", "towhee_rt", "quickstart"])
    assert no_images.returncode == 2
    assert "the following arguments are required: --images" in no_images.stderr
    no_command = _python(["-m", "towhee_rt"])
    assert no_command.returncode == 2 and "COMMAND" in no_command.stderr


def test_quickstart_names_a_folder_without_images(tmp_path):
    assert cli.main(["quickstart", "--images", str(tmp_path)]) == 2


_SHIM = textwrap.dedent("""
    import inspect, types
    import towhee_rt
    from towhee_rt.errors import ServerError
    from towhee_rt.triton.server import serve
    assert towhee_rt.serve is serve, "the package attribute is the function before the import"
    import towhee_rt.serve as m
    assert isinstance(m, types.ModuleType) and m.__name__ == "towhee_rt.serve"
    assert callable(m.main) and m.serve is serve
    assert towhee_rt.serve is m and callable(towhee_rt.serve)
    try:  # the callable module delegates to serve(), which checks the path before starting
        towhee_rt.serve("/no/such/repo", grpc_port=0, http_port=0, metrics_port=0)
    except ServerError as exc:
        assert "/no/such/repo does not exist" in str(exc), exc
    else:
        raise AssertionError("no ServerError")
    print("ok")
""")


def test_serve_module_is_a_module_and_stays_callable():
    result = _python(["-c", _SHIM])  # a fresh interpreter: nothing imported towhee_rt.serve yet
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_console_script_entry_point_resolves():
    setup = configparser.ConfigParser()
    setup.read(REPO_ROOT / "setup.cfg")
    declared = [line.strip() for line in
                setup["options.entry_points"]["console_scripts"].strip().splitlines()]
    assert declared == ["towhee-rt = towhee_rt.cli:main"]
    name, value = (part.strip() for part in declared[0].split("="))
    assert metadata.EntryPoint(name, value, "console_scripts").load() is cli.main
    installed = [ep for ep in metadata.entry_points(group="console_scripts")
                 if ep.name == "towhee-rt"]
    assert installed, "towhee-rt is not installed: reinstall towhee_rt (bash .ci/setup)"
    assert installed[0].value == "towhee_rt.cli:main"


def test_console_script_runs():
    script = Path(sys.executable).with_name("towhee-rt")
    if not script.exists():
        pytest.fail(f"{script} is missing: reinstall towhee_rt (bash .ci/setup)")
    result = subprocess.run([str(script), "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.startswith("usage: towhee-rt "), result.stderr


# ------------------------------------------------------------------------------ key files
def _key_file(tmp_path, text, mode=0o600):
    path = tmp_path / "key"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_key_file_is_stripped_and_checked(tmp_path):
    assert cli_serve.read_key_file(_key_file(tmp_path, "  s3cr3t-key_1\n\n")) == "s3cr3t-key_1"
    assert cli_serve.read_key_file(_key_file(tmp_path, "k", mode=0o640)) == "k"  # group may read


@pytest.mark.parametrize("text, mode, message", [
    ("\n  \n", 0o600, "is empty; write a key into it"),
    ("key", 0o644, "is readable by every user of this machine; make it private first: "
                   "chmod 600"),
    ("two words", 0o600, "printable ASCII characters only"),
    ("x" * 5000, 0o600, "larger than 4096 bytes"),
], ids=["empty", "world-readable", "spaces", "huge"])
def test_bad_key_files_are_refused(tmp_path, text, mode, message):
    with pytest.raises(cli_serve.ConfigError, match=message):
        cli_serve.read_key_file(_key_file(tmp_path, text, mode))


def test_missing_key_file_and_directory_are_refused(tmp_path):
    with pytest.raises(cli_serve.ConfigError, match="--api-key-file .*nope: cannot read it"):
        cli_serve.read_key_file(tmp_path / "nope")
    with pytest.raises(cli_serve.ConfigError, match="--admin-key-file .*: not a regular file"):
        cli_serve.read_key_file(tmp_path, "--admin-key-file")


def test_serve_with_a_bad_key_file_is_a_usage_error_before_anything_starts(tmp_path, capsys):
    key = _key_file(tmp_path, "", 0o600)
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", str(tmp_path), "--api-key-file", str(key)])
    assert info.value.code == 2
    assert f"--api-key-file {key} is empty" in capsys.readouterr().err


def test_serve_help_names_the_key_files_not_keys():
    result = _python(["-m", "towhee_rt", "serve", "--help"])
    assert "--api-key-file FILE" in result.stdout and "--admin-key-file FILE" in result.stdout
    assert "--api-key " not in result.stdout  # no way to put a key on the command line


# ------------------------------------------------------------------------------ serving
def test_stop_timeout_covers_tritonservers_exit_timeout():
    from towhee_rt.triton.flags import EXIT_TIMEOUT_SECS

    # tritonserver needs up to its exit timeout to finish requests and unload the models
    # (4.3 s measured for resnet50 here); the CLI must not kill it before.
    assert cli_serve.STOP_TIMEOUT > EXIT_TIMEOUT_SECS >= 15


def test_serve_logs_towhee_rt_messages_to_stderr_once(capsys):
    import logging

    logger = logging.getLogger("towhee_rt")
    saved = logger.handlers[:], logger.level
    logger.handlers = []
    try:
        cli_serve._log_to_stderr()
        cli_serve._log_to_stderr()
        assert len(logger.handlers) == 1
        logger.warning("model echo: stub echo_0_0 (pid 1) killed by SIGKILL")
        logger.debug("not shown")
        err = capsys.readouterr().err
    finally:
        logger.handlers, _ = saved
        logger.setLevel(saved[1])
    assert "towhee_rt WARNING: model echo: stub echo_0_0 (pid 1) killed by SIGKILL" in err
    assert "not shown" not in err


# ------------------------------------------------------------------------- usage errors
@pytest.mark.parametrize("args, message", [
    (["--grpc-port", "99999"], "argument --grpc-port: 99999 is not a port number (0-65535"),
    (["--http-port", "-1"], "argument --http-port: -1 is not a port number"),
    (["--metrics-port", "http"], "argument --metrics-port: 'http' is not a port number"),
    (["--ready-timeout", "0"], "argument --ready-timeout: 0 must be > 0"),
    (["--log-verbose", "-2"], "argument --log-verbose: -2 must be >= 0"),
], ids=["port-too-high", "negative-port", "port-not-a-number", "timeout", "log-verbose"])
def test_bad_numbers_are_one_line_usage_errors(tmp_path, capsys, args, message):
    with pytest.raises(SystemExit) as info:
        cli.main(["serve", str(tmp_path), *args])
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("towhee-rt serve: error: "), err
    assert message in err and err.rstrip().endswith("(see towhee-rt serve --help)")


def test_version():
    result = _python(["-m", "towhee_rt", "--version"])
    import towhee_rt

    assert result.returncode == 0 and result.stdout == f"towhee_rt {towhee_rt.__version__}\n"


# ------------------------------------------------------------------------------- build
_PIPELINES = textwrap.dedent("""
    import towhee_rt as towhee

    decode = towhee.dummy_input().image_decode.cv2_rgb().as_function()


    def make_decode():
        return towhee.dummy_input().image_decode.cv2_rgb().as_function()


    def needs_an_argument(size):
        return decode


    not_a_pipeline = 3
""")


@pytest.fixture
def pipelines_module(tmp_path, monkeypatch):
    name = f"towhee_rt_test_pipes_{os.getpid()}"
    path = tmp_path / f"{name}.py"
    path.write_text(_PIPELINES)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", list(sys.path))
    yield name, path
    sys.modules.pop(name, None)


def test_build_writes_the_repository_of_a_pipeline_in_a_file(pipelines_module, tmp_path, capsys):
    _, path = pipelines_module
    assert cli.main(["build", f"{path}:decode", str(tmp_path / "repo")]) == 0
    assert (tmp_path / "repo" / "pipeline" / "config.pbtxt").is_file()
    assert f"towhee-rt serve {tmp_path / 'repo'}" in capsys.readouterr().out


def test_build_takes_a_module_name_and_a_function(pipelines_module, tmp_path):
    name, _ = pipelines_module
    repo = tmp_path / "repo"
    assert cli.main(["build", f"{name}:make_decode", str(repo), "--model-name", "dec"]) == 0
    assert (repo / "dec" / "config.pbtxt").is_file()
    assert cli.main(["build", f"{name}:make_decode", str(repo)]) == 2  # not empty
    assert cli.main(["build", f"{name}:make_decode", str(repo), "--overwrite"]) == 0


@pytest.mark.parametrize("spec, message", [
    ("towhee_rt_no_such_module:pipe", "no module named 'towhee_rt_no_such_module'"),
    ("{name}:missing", "module '{name}' has no attribute 'missing'"),
    ("{name}:not_a_pipeline", "{name}:not_a_pipeline is not a pipeline (its type: int)"),
    ("{name}:needs_an_argument", "calling it without arguments failed"),
    ("{name}", "expected MODULE:PIPELINE"),
    ("no/such/file.py:pipe", "no such file: no/such/file.py"),
], ids=["module", "attribute", "not-a-pipeline", "needs-arguments", "no-colon", "file"])
def test_build_usage_errors_are_one_line_and_exit_2(pipelines_module, tmp_path, capsys, spec,
                                                    message):
    name, _ = pipelines_module
    assert cli.main(["build", spec.format(name=name), str(tmp_path / "repo")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("towhee-rt build: error: "), err
    assert message.format(name=name) in err
    assert not (tmp_path / "repo").exists()


def test_tune_numbers_are_checked_as_usage_errors(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        cli.main(["tune", str(tmp_path), "--concurrency", "0"])
    assert info.value.code == 2
    assert "argument --concurrency: 0 must be >= 1" in capsys.readouterr().err
