"""No stop path leaves a stub process or a shared-memory region of ours behind: stop() with
a request in flight, a crash of tritonserver, a failed start, SIGTERM or SIGKILL of the CLI; a
start removes the regions of dead processes. Recoveries: test_recovery.py."""
from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict

import numpy as np
import pytest

from towhee_rt.triton import procs
from towhee_rt.triton.server import ServerStartError, TritonServer

from ._procs import events_of, infer_echo, nothing_left, processes_using, start_cli, wait_for
from ._tiny_repo import write_tiny_repo
from .test_server import _Lines

pytestmark = pytest.mark.integration


# ---------------------------------------------------------------------------- stop paths
def test_graceful_stop_lets_the_request_in_flight_finish(tmp_path):
    server = TritonServer(write_tiny_repo(tmp_path / "repo", ["nap"])).start().wait_ready()
    answer: Dict[str, object] = {}

    def call():
        try:
            answer["output"] = infer_echo(server.grpc_url, "nap", 2.0)
        except Exception as exc:  # noqa: BLE001
            answer["error"] = exc

    thread = threading.Thread(target=call)
    thread.start()
    time.sleep(0.7)  # the request is in execute() now
    code = server.stop()
    thread.join(30)
    assert code == 0
    assert "error" not in answer, answer
    np.testing.assert_array_equal(answer["output"], [[4, 4]])
    assert nothing_left(server.shm_prefix, timeout=0.5)


def test_crash_of_tritonserver_is_cleaned_up_at_once(tmp_path):
    # A crash keeps the log: give one in tmp_path, not a temporary file.
    server = TritonServer(write_tiny_repo(tmp_path / "repo", ["echo2"]),
                          log_file=tmp_path / "server.log").start().wait_ready()
    try:
        assert len(processes_using(server.shm_prefix)) == 2
        os.kill(server.pid, signal.SIGKILL)
        # No stop() yet: the supervisor notices and removes the stubs and the regions.
        assert nothing_left(server.shm_prefix), procs.regions(server.shm_prefix)
        exited = wait_for(lambda: events_of(server, "server_exited"), 5)
        assert exited and exited[0]["cause"] == "killed by SIGKILL"
        assert not server.models_ready()
    finally:
        code = server.stop()
    assert code == -signal.SIGKILL


@pytest.mark.parametrize("models, timeout, message", [
    (["echo", "broken"], 60, "exited with code 1 before it was ready"),
    (["echo", "slow"], 3, r"not ready after 3 s \(still loading: slow\)"),
], ids=["model-fails-to-load", "model-hangs-in-initialize"])
def test_failed_start_leaves_nothing(tmp_path, models, timeout, message):
    server = TritonServer(write_tiny_repo(tmp_path / "repo", models), ready_timeout=timeout,
                          log_file=tmp_path / "server.log")
    with pytest.raises(ServerStartError, match=message):
        with server:
            pass
    assert server.shm_prefix and nothing_left(server.shm_prefix, timeout=0.5)


def test_regions_of_dead_processes_are_removed_at_start(tmp_path):
    gone = subprocess.Popen(["true"])
    gone.wait()
    stale = Path(procs.SHM_DIR) / f"towhee_rt_{gone.pid}_0_stale-test"
    live = Path(procs.SHM_DIR) / f"towhee_rt_{os.getpid()}_99999_live-test"
    foreign = Path(procs.SHM_DIR) / f"triton_python_backend_shm_region_{gone.pid}-test"
    for path in (stale, live, foreign):
        path.write_bytes(b"x" * 4096)
    try:
        server = TritonServer(write_tiny_repo(tmp_path / "repo", ["echo"]))
        with server:
            assert not stale.exists()  # its owner is gone
            assert live.exists() and foreign.exists()  # a live owner's; not ours at all
    finally:
        for path in (stale, live, foreign):
            path.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- the CLI
@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGKILL],
                         ids=["SIGTERM", "SIGKILL"])
def test_cli_stopped_by_a_signal_leaves_nothing(tmp_path, stop_signal):
    process = start_cli(tmp_path, ["echo2"])
    prefix = f"towhee_rt_{process.pid}_0_"
    try:
        _Lines(process.stdout).until("Press Ctrl-C to stop", 60)
        assert len(processes_using(prefix)) == 2 and len(procs.regions(prefix)) == 2
        process.send_signal(stop_signal)
        process.wait(40)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    # SIGKILL: no code of ours runs in the CLI; its watchdog cleans up within seconds.
    assert nothing_left(prefix, timeout=10), (processes_using(prefix), procs.regions(prefix))
