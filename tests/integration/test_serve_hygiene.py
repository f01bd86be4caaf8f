"""What serving leaves behind and what a newcomer's mistakes print: the repository stays
byte-identical (no ``__pycache__``), the temporary log goes with a clean stop and stays after a
failure, and a folder of repositories or a model folder is refused before anything starts."""
from __future__ import annotations

import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict

import pytest

from towhee_rt.errors import ServerError
from towhee_rt.triton.server import ServerStartError, TritonServer

from ._procs import infer_echo
from ._tiny_repo import write_tiny_repo
from .test_server import REPO_ROOT

pytestmark = pytest.mark.integration


def _snapshot(root: Path) -> Dict[str, str]:
    """Relative path -> sha256 of every file and directory under ``root``."""
    return {str(path.relative_to(root)): (hashlib.sha256(path.read_bytes()).hexdigest()
                                          if path.is_file() else "dir")
            for path in sorted(root.rglob("*"))}


def test_serving_leaves_the_repository_byte_identical_and_no_temporary_log(tmp_path):
    # probe imports a sibling module and a relative one: without care, __pycache__ appears.
    repo = write_tiny_repo(tmp_path / "repo", ["echo", "probe"])
    before = _snapshot(repo)
    server = TritonServer(repo)
    with server:
        assert infer_echo(server.grpc_url).tolist() == [[2, 2]]
        infer_echo(server.grpc_url, "probe")
        log_file = server.log_file
        assert log_file.exists()
    assert _snapshot(repo) == before
    assert not log_file.exists()  # a clean stop removes the temporary log


def test_kept_and_given_logs_survive_a_clean_stop(tmp_path):
    repo = write_tiny_repo(tmp_path / "repo")
    with TritonServer(repo, keep_log=True) as kept:
        pass
    given = tmp_path / "server.log"
    with TritonServer(repo, log_file=given):
        pass
    try:
        assert kept.log_file.exists() and given.exists()
    finally:
        kept.log_file.unlink(missing_ok=True)


def test_a_failed_start_keeps_its_log(tmp_path):
    server = TritonServer(write_tiny_repo(tmp_path / "repo", ["broken"]), ready_timeout=60)
    with pytest.raises(ServerStartError) as info:
        server.start_ready()
    try:
        assert server.log_file.exists() and str(server.log_file) in str(info.value)
    finally:
        server.log_file.unlink(missing_ok=True)


def test_a_folder_of_repositories_is_refused_with_the_one_to_pass(tmp_path):
    outer = tmp_path / "outer"
    for name in ("repo_a", "repo_b"):
        write_tiny_repo(outer / name)
    server = TritonServer(outer)
    with pytest.raises(ServerError, match="holds model repositories, not models") as info:
        server.start()
    assert f"serve one of them, e.g. {outer / 'repo_a'}" in str(info.value)
    assert server.pid is None
    with pytest.raises(ServerError, match="is one model .*, not a model repository; serve the "
                                          "folder that holds it"):
        TritonServer(outer / "repo_a" / "echo").start()


def test_cli_names_the_sub_folder_to_serve(tmp_path):
    outer = tmp_path / "outer"
    write_tiny_repo(outer / "repo_a")
    result = subprocess.run([sys.executable, "-m", "towhee_rt", "serve", str(outer)],
                            capture_output=True, text=True, timeout=120, cwd=REPO_ROOT)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: {outer} holds model repositories, not models ({outer / 'repo_a'} have no "
        f"config.pbtxt but hold models); serve one of them, e.g. {outer / 'repo_a'}"]


def test_cli_interrupted_while_starting_exits_130_and_leaves_no_log(tmp_path):
    repo = write_tiny_repo(tmp_path / "repo", ["echo", "slow"])  # slow: never ready in time
    logs = tmp_path / "tmp"
    logs.mkdir()
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TMPDIR=str(logs))
    process = subprocess.Popen([sys.executable, "-m", "towhee_rt", "serve", str(repo),
                                "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0"],
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list(logs.glob("towhee_rt-tritonserver-*.log")) and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # tritonserver is loading the models now
        process.send_signal(signal.SIGINT)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130, err
    assert "interrupted while starting; tritonserver is stopped" in err
    assert not list(logs.glob("towhee_rt-tritonserver-*.log"))
