"""Helpers shared by the fault tests against the real tritonserver (test_recovery.py,
test_clean_stops.py): its stubs and regions as /proc and /dev/shm show them, events, a tiny
gRPC request, and the CLI started on a tiny repository."""
from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np

from towhee_rt.triton import procs
from towhee_rt.triton.server import TritonServer

from ._tiny_repo import write_tiny_repo
from .test_server import SERVE_COMMAND, _cli


def wait_for(predicate: Callable[[], object], timeout: float, step: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    return predicate()


def stubs_of(server_pid: int, model: Optional[str] = None) -> Dict[int, procs.Stub]:
    """Live stubs of tritonserver ``server_pid`` (of ``model`` if given), by pid."""
    found = {}
    for pid, stat in procs.server_children(server_pid).items():
        stub = procs.parse_stub(pid, procs.cmdline(pid)) if stat.state not in "ZX" else None
        if stub and (model is None or stub.model == model):
            found[pid] = stub
    return found


def processes_using(prefix: str) -> List[int]:
    """Live stubs anywhere (re-parented ones included) whose region is named ``prefix...``."""
    found = []
    for stat in procs.all_processes():
        stub = procs.parse_stub(stat.pid, procs.cmdline(stat.pid))
        if stub and stub.region.startswith(prefix) and stat.state not in "ZX":
            found.append(stat.pid)
    return found


def nothing_left(prefix: str, timeout: float = 10.0) -> bool:
    return bool(wait_for(lambda: not processes_using(prefix) and not procs.regions(prefix),
                         timeout, 0.1))


def events_of(server: TritonServer, kind: str) -> List[dict]:
    return [event for event in server.events if event["event"] == kind]


def infer_echo(url: str, model: str = "echo", value: float = 1.0, timeout: float = 30):
    """OUTPUT0 of one gRPC request to a tiny echo-like model."""
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        tensor = grpcclient.InferInput("INPUT0", [1, 2], "FP32")
        tensor.set_data_from_numpy(np.full((1, 2), value, np.float32))
        return client.infer(model, [tensor], client_timeout=timeout).as_numpy("OUTPUT0")
    finally:
        client.close()


def kill_stub(pid: int, sig: int = signal.SIGKILL) -> None:
    os.kill(pid, sig)
    if sig == signal.SIGKILL:  # a zombie from here on, as tritonserver does not reap it
        gone = procs.ProcStat(pid, "", "X", 0, 0, 0, None)
        assert wait_for(lambda: (procs.proc_stat(pid) or gone).state in "ZX", 5)


def start_cli(tmp_path: Path, models: List[str]) -> subprocess.Popen:
    repo = write_tiny_repo(tmp_path / "repo", models)
    return _cli([str(repo), "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0",
                 "--log-file", str(tmp_path / "server.log")], SERVE_COMMAND)


def grpc_url_of(shown: str) -> str:
    return shown.split("gRPC:    ", 1)[1].split()[0]
