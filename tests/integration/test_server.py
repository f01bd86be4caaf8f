"""The launcher against the real tritonserver carried by nvidia-pytriton (free ports, always
stopped), plus the pure command builders."""
from __future__ import annotations

import json
import os
import queue
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List, Set

import numpy as np
import pytest

from towhee_rt.errors import ServerError
from towhee_rt.triton import procs
from towhee_rt.triton.commands import build_command, docker_command, docker_engine_available
from towhee_rt.triton.ports import find_free_port
from towhee_rt.triton.server import ServerStartError, TritonServer, serve
from towhee_rt.triton.server_log import parse_failed_models

from ._tiny_repo import write_tiny_repo

pytestmark = pytest.mark.integration
REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def tiny_repo(tmp_path_factory) -> Path:
    return write_tiny_repo(tmp_path_factory.mktemp("tiny") / "repo", ["echo", "probe"])


@pytest.fixture(scope="module")
def server(tiny_repo):
    srv = TritonServer(tiny_repo)
    try:
        srv.start()
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


def _session_pids(sid: int) -> Set[int]:
    """Live (non-zombie) processes of session ``sid``: tritonserver and its Python stubs."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()  # state ppid pgrp session ...
        if int(fields[3]) == sid and fields[0] != "Z":
            pids.add(int(entry.name))
    return pids


def _listen_addresses(port: int) -> List[str]:
    """Local addresses (hex, as in /proc/net/tcp*) of LISTEN sockets on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, port_hex = local.split(":")
            if state == "0A" and int(port_hex, 16) == port:
                found.append(address)
    return found


# ------------------------------------------------------------------------- a running server
def test_echo_over_http_and_grpc(server):
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    data = np.arange(6, dtype=np.float32).reshape(2, 3)
    for module, url in ((httpclient, server.http_url), (grpcclient, server.grpc_url)):
        client = module.InferenceServerClient(url)
        try:
            tensor = module.InferInput("INPUT0", list(data.shape), "FP32")
            tensor.set_data_from_numpy(data)
            result = client.infer("echo", [tensor]).as_numpy("OUTPUT0")
        finally:
            client.close()
        np.testing.assert_array_equal(result, data * 2)
    assert server.models_ready()
    assert server.model_states() == {"echo": "READY", "probe": "READY"}
    assert server.metrics_url.endswith("/metrics") and "nv_inference" in _get(server.metrics_url)


def _get(url: str) -> str:
    import urllib.request

    with urllib.request.urlopen(url, timeout=5) as response:
        return response.read().decode()


def test_endpoints_bind_loopback_only(server):
    loopback_v4, mapped_v6 = "0100007F", "0000000000000000FFFF00000100007F"
    for port in server.ports.values():
        addresses = _listen_addresses(port)
        assert addresses, f"nothing listens on {port}"
        assert set(addresses) <= {loopback_v4, mapped_v6}, (port, addresses)
    other_ip = _non_loopback_ip()
    if other_ip:
        with pytest.raises(OSError):
            socket.create_connection((other_ip, server.ports["HTTP"]), timeout=2).close()


def _non_loopback_ip():
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.connect(("10.255.255.255", 1))  # no packet is sent
            ip = sock.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") else ip


def test_model_py_imports_siblings_and_relative(server):
    """What operators may rely on: the version dir and the model dir are on sys.path, and
    model.py is imported as ``1.model`` (package ``1``), so ``from .ops import x`` works."""
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(server.http_url)
    try:
        tensor = httpclient.InferInput("INPUT0", [1, 1], "FP32")
        tensor.set_data_from_numpy(np.zeros((1, 1), np.float32))
        report = json.loads(client.infer("probe", [tensor]).as_numpy("OUTPUT0")[0, 0])
    finally:
        client.close()
    model_dir = str(server.model_repository.resolve() / "probe")
    assert report["name"] == "1.model" and report["package"] == "1"
    assert model_dir + "/1" in report["sys_path"] and model_dir in report["sys_path"]
    assert report["sibling_import"] == 42
    assert report["relative_import"] == "inner"


# ----------------------------------------------------------------------------- failures
def test_broken_model_fails_start_with_log_and_name(tmp_path):
    repo = write_tiny_repo(tmp_path / "repo", ["echo", "broken"])
    srv = TritonServer(repo, ready_timeout=60, log_file=tmp_path / "server.log")
    try:
        with pytest.raises(ServerStartError) as info:
            srv.start().wait_ready()
    finally:
        srv.stop()
    message = str(info.value)
    assert list(info.value.failed_models) == ["broken"]
    assert "broken on purpose" in info.value.failed_models["broken"]
    # The cause first, then what happened, then where the log is (kept after a failure).
    assert message.startswith("model 'broken' failed to load: Internal: RuntimeError: broken "
                              "on purpose"), message
    assert "exited with code 1 before it was ready" in message.splitlines()[1]
    assert message.splitlines()[-1] == f"log: {srv.log_file}" and srv.log_file.exists()
    assert "| Option " not in message and "CUDA" not in message


def test_ready_timeout_names_the_loading_model_and_stops(tmp_path):
    srv = TritonServer(write_tiny_repo(tmp_path / "repo", ["slow"]), ready_timeout=2,
                       log_file=tmp_path / "server.log")
    with pytest.raises(ServerStartError, match=r"not ready after 2 s \(still loading: slow\)"):
        with srv:
            pass
    assert not srv.is_alive() and not _session_pids(srv.pid)


def test_busy_port_is_reported_before_start(tmp_path):
    repo = write_tiny_repo(tmp_path / "repo")
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        srv = TritonServer(repo, grpc_port=port)
        with pytest.raises(ServerError) as info:
            srv.start()
    assert str(info.value) == (f"gRPC port {port} on 127.0.0.1 is already in use; choose "
                               "another with --grpc-port or stop the process using it")
    assert srv.pid is None


def test_nonexistent_repository(tmp_path):
    missing = tmp_path / "no_such_repo"
    with pytest.raises(ServerError, match="model repository .*no_such_repo does not exist"):
        serve(missing, grpc_port=0, http_port=0, metrics_port=0)


@pytest.mark.skipif(docker_engine_available(), reason="a Docker engine is running here")
def test_docker_without_engine_names_the_command(tmp_path):
    srv = TritonServer(write_tiny_repo(tmp_path / "repo"), docker_image="image_embedding:v1")
    with pytest.raises(ServerError, match=r"no Docker engine.*Command: docker run --rm "):
        srv.start()
    assert srv.pid is None


# ----------------------------------------------------------------------------- lifecycle
def test_stop_ends_server_and_stubs(tmp_path):
    srv = serve(write_tiny_repo(tmp_path / "repo"), grpc_port=0, http_port=0, metrics_port=0)
    try:
        before = _session_pids(srv.pid)
        assert srv.pid in before and len(before) >= 2, before  # server + echo's stub
        assert len(procs.regions(srv.shm_prefix)) == 1  # echo's stub's shared memory
    finally:
        code = srv.stop()
    assert code == 0 and not srv.is_alive()
    assert not _session_pids(srv.pid)
    assert procs.regions(srv.shm_prefix) == []
    assert srv.stop() == 0  # idempotent


_ORPHAN_PARENT = """
import sys, time
from towhee_rt.triton.server import TritonServer
server = TritonServer(sys.argv[1], log_file=sys.argv[2]).start().wait_ready()
print(server.pid, flush=True)
time.sleep(120)
"""


def test_server_and_stubs_die_with_the_parent(tmp_path):
    repo = write_tiny_repo(tmp_path / "repo")
    parent = subprocess.Popen([sys.executable, "-c", _ORPHAN_PARENT, str(repo),
                               str(tmp_path / "server.log")], stdout=subprocess.PIPE, text=True,
                              env=dict(os.environ, PYTHONPATH=str(REPO_ROOT)))
    prefix = f"towhee_rt_{parent.pid}_0_"
    try:
        server_pid = int(parent.stdout.readline())
        assert len(_session_pids(server_pid)) >= 2
        assert len(procs.regions(prefix)) == 1
    finally:
        parent.kill()  # SIGKILL: no cleanup code runs in the parent
        parent.wait()
    # tritonserver dies with it (PDEATHSIG); its watchdog kills the stubs and removes the
    # shared memory they would leave behind.
    deadline = time.monotonic() + 10
    while (_session_pids(server_pid) or procs.regions(prefix)) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _session_pids(server_pid)
    assert procs.regions(prefix) == []


class _Lines:
    """Reads a text stream in a thread so that tests can wait for a line with a timeout."""

    def __init__(self, stream):
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.text = ""
        self._thread = threading.Thread(target=lambda: [self.lines.put(x) for x in stream],
                                        daemon=True)
        self._thread.start()

    def until(self, marker: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while marker not in self.text and time.monotonic() < deadline:
            try:
                self.text += self.lines.get(timeout=0.5)
            except queue.Empty:
                pass
        return self.text

    def rest(self) -> str:
        self._thread.join(10)
        while not self.lines.empty():
            self.text += self.lines.get()
        return self.text


#: The two spellings of the serve command: the old module and the package's command line.
SERVE_SHIM = ["-m", "towhee_rt.serve"]
SERVE_COMMAND = ["-m", "towhee_rt", "serve"]


def _cli(args: List[str], command: List[str] = SERVE_SHIM) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), PYTHONUNBUFFERED="1")
    return subprocess.Popen([sys.executable, *command, *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("stop_signal, command", [(signal.SIGINT, SERVE_SHIM),
                                                  (signal.SIGTERM, SERVE_COMMAND)],
                         ids=["SIGINT-towhee_rt.serve", "SIGTERM-towhee_rt serve"])
def test_cli_serves_and_exits_0_on_signal(tmp_path, stop_signal, command):
    import tritonclient.grpc as grpcclient

    repo = write_tiny_repo(tmp_path / "repo")
    ports = [str(find_free_port()) for _ in range(3)]
    process = _cli([str(repo), "--grpc-port", ports[0], "--http-port", ports[1],
                    "--metrics-port", ports[2], "--log-file", str(tmp_path / "server.log")],
                   command)
    try:
        out = _Lines(process.stdout)
        shown = out.until("Press Ctrl-C to stop", 60)
        assert f"gRPC:    127.0.0.1:{ports[0]}" in shown, shown + process.stderr.read()
        assert f"HTTP:    http://127.0.0.1:{ports[1]}" in shown
        assert f"metrics: http://127.0.0.1:{ports[2]}/metrics" in shown
        assert "models:  echo" in shown
        client = grpcclient.InferenceServerClient(f"127.0.0.1:{ports[0]}")
        tensor = grpcclient.InferInput("INPUT0", [1, 2], "FP32")
        tensor.set_data_from_numpy(np.array([[1.5, -2]], np.float32))
        np.testing.assert_array_equal(client.infer("echo", [tensor]).as_numpy("OUTPUT0"),
                                      [[3, -4]])
        client.close()
        assert len(procs.regions(f"towhee_rt_{process.pid}_0_")) == 1
        process.send_signal(stop_signal)
        assert process.wait(30) == 0
        assert "tritonserver stopped (exit code 0)" in out.rest()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert procs.regions(f"towhee_rt_{process.pid}_0_") == []
    assert "failed to load" not in (tmp_path / "server.log").read_text()
    assert "RuntimeWarning" not in process.stderr.read()


def test_cli_start_failure_exits_1_with_reason(tmp_path):
    repo = write_tiny_repo(tmp_path / "repo", ["broken"])
    process = _cli([str(repo), "--grpc-port", "0", "--http-port", "0", "--metrics-port", "0",
                    "--log-file", str(tmp_path / "server.log")], SERVE_COMMAND)
    try:
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode == 1
    assert err.startswith("error: model 'broken' failed to load: Internal: RuntimeError: "
                          "broken on purpose"), err
    assert "CUDA" not in err and "Traceback" not in err
    assert len(err.splitlines()) <= 4, err  # cause, what happened, log path: no log dump


def test_prepare_embedded_tritonserver(tmp_path):
    import sysconfig

    from towhee_rt.triton.embedded import STUB_NAME, prepare_embedded_tritonserver

    binary, backends, env = prepare_embedded_tritonserver(tmp_path / "ts")
    assert binary == tmp_path / "ts" / "bin" / "tritonserver" and os.access(binary, os.X_OK)
    assert (backends / "python" / STUB_NAME).is_file()
    assert env["LD_LIBRARY_PATH"].split(os.pathsep)[0] == sysconfig.get_config_var("LIBDIR")
    assert "nvidia_pytriton.libs" in env["LD_LIBRARY_PATH"].split(os.pathsep)[1]
    assert env["PATH"].split(os.pathsep)[0] == os.path.dirname(sys.executable)
    stamp = binary.stat().st_mtime_ns
    assert prepare_embedded_tritonserver(tmp_path / "ts")[0].stat().st_mtime_ns == stamp
    assert [p.name for p in tmp_path.iterdir()] == ["ts"]  # no temporary directory left


def test_stub_environment_puts_libpython_and_the_venv_first():
    import sysconfig

    from towhee_rt.triton.embedded import stub_environment

    base = {"PATH": "/usr/bin:/bin", "LD_LIBRARY_PATH": "/opt/lib", "KEEP": "1"}
    env = stub_environment(base)
    libdir = sysconfig.get_config_var("LIBDIR")
    ld_path = env["LD_LIBRARY_PATH"].split(os.pathsep)
    assert ld_path[0] == libdir and "nvidia_pytriton.libs" in ld_path[1]
    assert ld_path[2:] == ["/opt/lib"]
    assert env["PATH"].split(os.pathsep) == [os.path.dirname(sys.executable), "/usr/bin", "/bin"]
    assert env["KEEP"] == "1" and base["PATH"] == "/usr/bin:/bin"  # a copy
    assert stub_environment(env) == env  # applying it twice changes nothing


# --------------------------------------------------------------------------- pure builders
def test_build_command_binds_host_and_uses_absolute_repository():
    argv = build_command("/opt/bin/tritonserver", "repo", grpc_port=1, http_port=2,
                         metrics_port=3, backend_directory="/b", extra_args=["--id=x"])
    assert argv[0] == "/opt/bin/tritonserver"
    assert f"--model-repository={os.path.abspath('repo')}" in argv
    for flag in ("--grpc-address=127.0.0.1", "--http-address=127.0.0.1",
                 "--metrics-address=127.0.0.1", "--grpc-port=1", "--http-port=2",
                 "--metrics-port=3", "--disable-auto-complete-config",
                 "--model-control-mode=explicit", "--load-model=*",
                 "--backend-directory=/b"):
        assert flag in argv
    assert argv[-1] == "--id=x"


def test_docker_command_follows_the_guide():
    argv = docker_command("image_embedding:v1", grpc_port=8001, http_port=8000,
                          metrics_port=8002)
    # NVIDIA's entrypoint, not towhee_rt's image's (which refuses the restriction flags given)
    assert argv[:8] == ["docker", "run", "--rm", "--entrypoint=/opt/nvidia/nvidia_entrypoint.sh",
                        "--gpus=all", "--shm-size=1g", "--net=host", "image_embedding:v1"]
    assert argv[8:11] == ["tritonserver", "--model-repository=/workspace/models",
                          "--grpc-address=127.0.0.1"]
    assert {"--grpc-port=8001", "--http-port=8000", "--metrics-port=8002"} <= set(argv)
    mounted = docker_command("img", model_repository="/data/repo", gpus=None, name="t1")
    assert "--gpus=all" not in mounted and "--name=t1" in mounted
    assert mounted[mounted.index("-v") + 1] == "/data/repo:/workspace/models:ro"


def test_parse_failed_models_and_unreadable_model_directories():
    log = ('E1124 model_lifecycle.cc:642] "failed to load \'enc\' version 1: Internal: '
           'ValueError: bad\\n\\nAt:\\n  /r/enc/1/model.py(3): initialize\\n"\n'
           'I1124 model_lifecycle.cc:777] "failed to load \'enc\'"\n'
           'I1124 model_lifecycle.cc:777] "failed to load \'other\'"\n')
    assert parse_failed_models(log) == {
        "enc": "Internal: ValueError: bad | At: |   /r/enc/1/model.py(3): initialize",
        "other": ""}
    poll = ('E1203 model_repository_manager.cc:1460] "Poll failed for model directory '
            '\'repo_a\': failed to open text file for read /x/repo_a/config.pbtxt: No such '
            'file or directory"\n')
    assert parse_failed_models(poll) == {
        "repo_a": "failed to open text file for read /x/repo_a/config.pbtxt: No such file or "
                  "directory"}
