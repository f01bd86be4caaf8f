"""The image's entrypoint, run for real without Docker: the build context's
``towhee_rt_entrypoint.sh`` (and the supervisor package beside it) around the REAL embedded
tritonserver, no stand-in.

What stands in for the container (docs/deploy.md, "The entrypoint outside a container"):
``PATH`` starts with the embedded tritonserver's ``bin/`` and this venv's ``bin/`` (python3 for
the supervisor and the stubs), ``LD_LIBRARY_PATH`` is the embedded server's
(:func:`~towhee_rt.triton.embedded.find_tritonserver`), ``TOWHEE_RT_BACKEND_DIRECTORY`` points at
its backends (``/opt/tritonserver/backends`` in the image) and ``TOWHEE_RT_MODEL_REPOSITORY`` at
the context's ``models/`` (``/workspace/models``). The server binds 127.0.0.1 on free ports:
the flags given to the entrypoint (merged into towhee_rt's, as ``docker run IMAGE FLAGS`` would)
replace the container's 0.0.0.0 and 8000-8002. NVIDIA's own entrypoint is not run here.
"""
from __future__ import annotations

import http.client
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

import towhee_rt as towhee
from towhee_rt.triton import docker, procs
from towhee_rt.triton.embedded import find_tritonserver
from towhee_rt.triton.flags import CONTAINER_REPOSITORY, container_command, key_headers
from towhee_rt.triton.ports import find_free_port

from ._procs import nothing_left, processes_using, wait_for
from .test_server import _Lines

pytestmark = pytest.mark.integration
API_KEY = "entrypoint-test-key"
#: As in test_recovery.py: a dead stub is noticed within 0.25 s, a tiny model is back soon after.
RECOVERY_LIMIT_S = 10.0


@pytest.fixture(scope="module")
def context(tmp_path_factory) -> Path:
    pipe = towhee.dummy_input().image_decode.cv2_rgb().as_function()
    return docker.write_build_context(pipe, tmp_path_factory.mktemp("image") / "ctx")


@pytest.fixture(scope="module")
def server_env() -> Dict[str, str]:
    """The embedded tritonserver's environment, arranged as the image has it."""
    binary, backend_dir, env = find_tritonserver()
    env = {k: v for k, v in env.items() if not k.startswith("TOWHEE_RT_")}
    env["PATH"] = f"{binary.parent}{os.pathsep}{env['PATH']}"  # tritonserver, then the venv
    env["TOWHEE_RT_BACKEND_DIRECTORY"] = str(backend_dir)
    return env


class Entrypoint:
    """The entrypoint script started with ``args``: its process (the supervisor, once bash has
    exec'd python3), output, ports and the shared-memory prefix of its tritonserver."""

    def __init__(self, context: Path, env: Dict[str, str], args: List[str], ports):
        self.http, self.grpc, self.metrics = ports
        self.process = subprocess.Popen(["/bin/bash", str(context / docker.ENTRYPOINT_NAME),
                                         *args], env=env, stdout=subprocess.PIPE,
                                        stderr=subprocess.STDOUT, text=True)
        self.output = _Lines(self.process.stdout)
        self.prefix = f"towhee_rt_{self.process.pid}_0_"  # the supervisor's: the same pid

    def request(self, method: str, path: str, headers=None):
        connection = http.client.HTTPConnection("127.0.0.1", self.http, timeout=10)
        try:
            connection.request(method, path, body=b"" if method == "POST" else None,
                               headers=headers or {})
            response = connection.getresponse()
            return response.status, response.read().decode(errors="replace")
        except OSError as exc:
            return None, str(exc)
        finally:
            connection.close()

    def ready(self) -> bool:
        return self.request("GET", "/v2/health/ready")[0] == 200

    def infer(self, image: Path, api_key=None):
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(f"127.0.0.1:{self.grpc}")
        try:
            tensor = grpcclient.InferInput("image", [1, 1], "BYTES")
            tensor.set_data_from_numpy(np.array([[image.read_bytes()]], dtype=np.object_))
            return client.infer("pipeline", [tensor], headers=key_headers("grpc", api_key),
                                client_timeout=30).as_numpy("image_output")
        finally:
            client.close()

    def tree(self) -> List[int]:
        return [stat.pid for stat in procs.process_tree(self.process.pid)]

    def stop(self, timeout: float = 40) -> int:
        """SIGTERM to the entrypoint's process; its exit code. On a timeout, kill what is
        left (tritonserver runs in its own process group) and fail."""
        tree = self.tree()
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill(tree)
            pytest.fail(f"the entrypoint did not stop within {timeout} s:\n{self.output.rest()}")

    def kill(self, tree=None) -> None:
        for pid in (tree or self.tree())[1:]:
            procs.kill_group(pid, timeout=2)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()
        procs.remove_regions(self.prefix)


def _ports():
    return find_free_port(), find_free_port(), find_free_port()


def _loopback(ports) -> List[str]:
    http, grpc, metrics = ports
    return ["--grpc-address=127.0.0.1", f"--grpc-port={grpc}", "--http-address=127.0.0.1",
            f"--http-port={http}", "--metrics-address=127.0.0.1", f"--metrics-port={metrics}"]


def _check_keys_and_admin(server: Entrypoint, image: Path):
    expected = server.infer(image, API_KEY)
    assert expected.shape == (1, 300, 451, 3)
    with pytest.raises(Exception, match="restricted, expecting header"):
        server.infer(image)  # without the key
    with pytest.raises(Exception, match="restricted, expecting header"):
        server.infer(image, "wrong-key")
    for headers in ({}, {"towhee-admin-key": "guess"}, {"towhee-api-key": API_KEY}):
        status, body = server.request("POST", "/v2/repository/index", headers)
        assert status == 403, (status, body)  # admin APIs: closed (a random admin key)
    assert server.request("GET", "/v2/logging")[0] == 403
    return expected


def test_entrypoint_serves_with_keys_recovers_a_stub_and_stops_clean(context, server_env,
                                                                      good_dir):
    image = good_dir / "chelsea.jpg"
    ports = _ports()
    env = {**server_env, "TOWHEE_RT_API_KEY": API_KEY,
           "TOWHEE_RT_MODEL_REPOSITORY": str(context / "models")}
    # `docker run IMAGE FLAGS...`: towhee_rt's command with these flags merged in.
    server = Entrypoint(context, env, _loopback(ports), ports)
    try:
        assert wait_for(server.ready, 60, 0.2), server.output.rest()
        expected = _check_keys_and_admin(server, image)
        # The argv the supervisor started: towhee_rt's flags, the overrides, the keys.
        (server_pid,) = [pid for pid in server.tree()[1:]
                         if procs.cmdline(pid)[:1] == ["tritonserver"]]
        real = Path(server_env["PATH"].split(os.pathsep)[0]) / "tritonserver"
        assert Path(os.readlink(f"/proc/{server_pid}/exe")) == real.resolve()  # no stand-in
        argv = procs.cmdline(server_pid)
        (admin_key,) = {a.rsplit("towhee-admin-key=", 1)[1] for a in argv
                        if "towhee-admin-key=" in a}  # drawn by the script, told to nobody
        http, grpc, metrics = ports
        replaced = {f"--model-repository={CONTAINER_REPOSITORY}":
                    f"--model-repository={context / 'models'}",
                    "--grpc-port=8001": f"--grpc-port={grpc}",
                    "--http-port=8000": f"--http-port={http}",
                    "--metrics-port=8002": f"--metrics-port={metrics}",
                    **{f"--{kind}-address=0.0.0.0": f"--{kind}-address=127.0.0.1"
                       for kind in ("grpc", "http", "metrics")}}
        wanted = [replaced.get(a, a)
                  for a in container_command(api_key=API_KEY, admin_key=admin_key)]
        assert argv == wanted + [
            f"--backend-directory={server_env['TOWHEE_RT_BACKEND_DIRECTORY']}",
            procs.SHM_PREFIX_FLAG + server.prefix]

        # A stub killed is recovered by the supervisor.
        (stub_pid,) = processes_using(server.prefix)
        os.kill(stub_pid, signal.SIGKILL)
        killed_at = time.monotonic()
        logged = server.output.until("is ready again after", RECOVERY_LIMIT_S)
        assert f"(pid {stub_pid}) killed by SIGKILL" in logged, logged
        assert "is ready again after" in logged, logged

        def served():
            try:
                return np.array_equal(server.infer(image, API_KEY), expected)
            except Exception:  # noqa: BLE001 - not back yet
                return False

        assert wait_for(served, RECOVERY_LIMIT_S, 0.2)
        assert time.monotonic() - killed_at < RECOVERY_LIMIT_S
        assert processes_using(server.prefix) and stub_pid not in processes_using(server.prefix)

        # SIGTERM to the entrypoint's process stops everything and leaves nothing.
        tree = server.tree()
        assert len(tree) >= 3  # supervisor, tritonserver, the stub
        assert server.stop() == 0
        assert wait_for(lambda: not [pid for pid in tree if procs.pid_alive(pid)], 5), [
            procs.proc_stat(pid) for pid in tree]
        assert nothing_left(server.prefix, timeout=2)
        assert "tritonserver exited (code 0)" in server.output.rest()
    finally:
        if server.process.poll() is None:
            server.kill()
    assert not procs.regions(server.prefix)


def test_the_guides_trailing_command_keeps_the_key_and_closes_admin(context, server_env,
                                                                     good_dir):
    """Towhee's guide's ``docker run ... IMAGE tritonserver --model-repository=/workspace/models
    --grpc-port=8001``, on loopback and free ports (the container's 8000/8002 on 0.0.0.0
    cannot be used on a shared machine)."""
    ports = _ports()
    env = {**server_env, "TOWHEE_RT_API_KEY": API_KEY}
    args = ["tritonserver", f"--model-repository={context / 'models'}",
            f"--grpc-port={ports[1]}"] + [a for a in _loopback(ports) if "grpc-port" not in a]
    server = Entrypoint(context, env, args, ports)
    try:
        assert wait_for(server.ready, 60, 0.2), server.output.rest()
        _check_keys_and_admin(server, good_dir / "chelsea.jpg")
        tree = server.tree()
        assert server.stop() == 0
        assert wait_for(lambda: not [pid for pid in tree if procs.pid_alive(pid)], 5)
        assert nothing_left(server.prefix, timeout=2)
        assert "tritonserver exited (code 0)" in server.output.rest()  # it was supervised
    finally:
        if server.process.poll() is None:
            server.kill()
