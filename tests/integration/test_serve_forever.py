"""Serving in the foreground from the library (``server.serve_forever()``, what ``towhee-rt
serve`` runs): it ends on request, on tritonserver's death, and always stops the server."""
from __future__ import annotations

import os
import signal
import threading

import pytest

from towhee_rt.triton.lifetime import SERVER_EXITED, STOPPED
from towhee_rt.triton.server import TritonServer

from ._procs import infer_echo, nothing_left
from ._tiny_repo import write_tiny_repo

pytestmark = pytest.mark.integration


def test_serve_forever_stops_on_request(tmp_path):
    stop = threading.Event()
    answers = []

    def on_ready(server):
        answers.append(infer_echo(server.grpc_url).tolist())
        stop.set()

    server = TritonServer(write_tiny_repo(tmp_path / "repo"))
    outcome = server.serve_forever(on_ready=on_ready, stop_requested=stop)
    assert answers == [[[2, 2]]]
    assert (outcome.reason, outcome.exit_code, outcome.failed) == (STOPPED, 0, False)
    assert outcome.message == "tritonserver stopped (exit code 0)"
    assert not server.is_alive() and nothing_left(server.shm_prefix, timeout=0.5)


def test_serve_forever_ends_when_tritonserver_dies(tmp_path):
    server = TritonServer(write_tiny_repo(tmp_path / "repo"), log_file=tmp_path / "server.log")
    outcome = server.serve_forever(on_ready=lambda s: os.kill(s.pid, signal.SIGKILL))
    assert outcome.failed and outcome.reason == SERVER_EXITED
    assert outcome.exit_code == -signal.SIGKILL
    assert f"log: {tmp_path / 'server.log'}" in outcome.message
    assert nothing_left(server.shm_prefix, timeout=0.5)
