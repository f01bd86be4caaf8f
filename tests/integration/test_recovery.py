"""Faults against the real tritonserver: a stub killed or hung is reloaded with honest
readiness and a model that keeps dying is left unloaded, by TritonServer, by the CLI and by the
image's supervisor package (standalone). The stop paths: test_clean_stops.py."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import List

import numpy as np
import pytest

import towhee_rt as towhee
from towhee_rt.triton import procs
from towhee_rt.triton.admin import TritonAdmin
from towhee_rt.triton.flags import EXIT_TIMEOUT_SECS, key_headers, server_flags
from towhee_rt.triton.ports import find_free_port
from towhee_rt.triton.server import TritonServer
from towhee_rt.triton.supervisor import HANG_SECS

from ._procs import (events_of, grpc_url_of, infer_echo, kill_stub, nothing_left,
                     processes_using, start_cli, stubs_of, wait_for)
from ._tiny_repo import write_tiny_repo
from .test_server import _Lines

pytestmark = pytest.mark.integration
#: Measured here: a dead stub is noticed within 0.25 s and a tiny model is back 0.2-0.4 s
#: later; the limit leaves room for a busy 2-core machine.
RECOVERY_LIMIT_S = 10.0


def _infer_image(url: str, image: Path):
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(url)
    try:
        tensor = grpcclient.InferInput("image", [1, 1], "BYTES")
        tensor.set_data_from_numpy(np.array([[image.read_bytes()]], dtype=np.object_))
        return client.infer("pipeline", [tensor]).as_numpy("image_output")
    finally:
        client.close()


@pytest.fixture(scope="module")
def pipeline_repo(tmp_path_factory) -> Path:
    pipe = towhee.dummy_input().image_decode.cv2_rgb().as_function()
    return Path(towhee.build_model_repo(pipe, tmp_path_factory.mktemp("pipe") / "repo").path)


# ---------------------------------------------------------------------------- recovery
def test_killed_stub_is_reloaded_and_readiness_is_honest_meanwhile(pipeline_repo, good_dir,
                                                                    tmp_path):
    image = good_dir / "chelsea.jpg"
    server = TritonServer(pipeline_repo, log_file=tmp_path / "server.log")
    with server:
        expected = _infer_image(server.grpc_url, image)
        assert expected.shape == (1, 300, 451, 3)
        (pid, stub), = stubs_of(server.pid).items()
        assert stub.model == "pipeline_0_image_decode_cv2_rgb"
        assert stub.instance == "pipeline_0_image_decode_cv2_rgb_0_0"
        assert stub.region.startswith(server.shm_prefix) and stub.region in procs.regions(
            server.shm_prefix)
        killed_at = time.monotonic()
        kill_stub(pid)
        readings = []  # (own readiness, Triton's readiness, recovered when read)
        while time.monotonic() - killed_at < 30:
            own = server.models_ready()
            triton = server.admin.request("GET", "/v2/health/ready", admin=False)[0]
            done = bool(events_of(server, "recovered"))
            readings.append((own, triton, done))
            if done:
                break
            time.sleep(0.05)
        recovered_after = time.monotonic() - killed_at
        assert events_of(server, "recovered"), server.events
        assert recovered_after < RECOVERY_LIMIT_S
        # Ours is false from the kill until the recovery; Triton's drops once it is unloaded.
        assert not any(own for own, _, done in readings if not done), readings
        assert any(triton != 200 for _, triton, _ in readings), readings
        assert wait_for(server.models_ready, 5)
        assert server.admin.request("GET", "/v2/health/ready", admin=False)[0] == 200
        np.testing.assert_array_equal(_infer_image(server.grpc_url, image), expected)

        died, = events_of(server, "stub_died")
        assert (died["model"], died["instance"], died["pid"], died["cause"]) == (
            stub.model, stub.instance, pid, "killed by SIGKILL")
        recovered, = events_of(server, "recovered")
        assert recovered["action"] == "unloaded and loaded again"
        assert recovered["instances"] == [stub.instance] and recovered["seconds"] < 10
        assert [e["event"] for e in server.events] == ["stub_died", "model_unloaded",
                                                       "recovered"]
        # The dead stub's region goes once Triton has let go of it; one per live stub stays.
        live = stubs_of(server.pid)
        assert len(live) == 1 and pid not in live
        assert wait_for(lambda: procs.regions(server.shm_prefix) == [
            s.region for s in live.values()], 10), procs.regions(server.shm_prefix)
        assert "killed by SIGKILL" in died["message"]
    assert nothing_left(server.shm_prefix)


def test_one_of_two_instances_killed_under_load_fails_only_requests_in_flight(tmp_path):
    server = TritonServer(write_tiny_repo(tmp_path / "repo", ["echo2"]))
    results: List[tuple] = []  # (started, ended, error or None), epoch seconds like events
    lock = threading.Lock()
    started, sent = time.monotonic(), [0]

    def client():
        while time.monotonic() - started < 30:
            with lock:
                if sent[0] >= 200:
                    return
                sent[0] += 1
            begin = time.time()
            try:
                infer_echo(server.grpc_url, "echo2")
                error = None
            except Exception as exc:  # noqa: BLE001 - every failure is recorded
                error = str(exc)
            with lock:
                results.append((begin, time.time(), error))
            time.sleep(0.02)

    with server:
        victim = sorted(stubs_of(server.pid, "echo2"))[0]
        stopping = float("inf")
        threads = [threading.Thread(target=client) for _ in range(2)]
        for thread in threads:
            thread.start()
        wait_for(lambda: len(results) >= 40, 20)
        killed_at = time.time()
        kill_stub(victim)
        for thread in threads:
            thread.join(40)
        recovered = wait_for(lambda: events_of(server, "recovered"), RECOVERY_LIMIT_S)
        assert recovered, server.events
        recovered_at = recovered[0]["time"]
        assert recovered_at - killed_at < RECOVERY_LIMIT_S
        failures = [r for r in results if r[2]]
        assert len(results) == 200
        # At most one per client: the requests that were on (or sent to) the dead instance.
        assert len(failures) <= 2, failures
        assert all("is not healthy" in error for _, _, error in failures), failures
        assert all(killed_at - 1.5 < begin < recovered_at for begin, _, _ in failures), failures
        assert [r for r in results if r[0] > recovered_at], "no request after the recovery"
        assert recovered[0]["action"].startswith("loaded again in place")
        assert len(stubs_of(server.pid, "echo2")) >= 2
        np.testing.assert_array_equal(infer_echo(server.grpc_url, "echo2", 3.0), [[6, 6]])
        stopping = time.monotonic()
    # The version whose dead stub got a request never unloads (Triton 2.51); stop() does not
    # wait the whole exit timeout for it.
    assert time.monotonic() - stopping < EXIT_TIMEOUT_SECS
    assert nothing_left(server.shm_prefix)


def test_hung_stub_is_killed_and_reloaded(tmp_path):
    server = TritonServer(write_tiny_repo(tmp_path / "repo", ["echo"]))
    with server:
        (pid, stub), = stubs_of(server.pid).items()
        os.kill(pid, signal.SIGSTOP)  # frozen: the backend stops seeing its health updates
        try:
            hung = wait_for(lambda: events_of(server, "stub_hung"), HANG_SECS + 5)
        finally:
            if procs.proc_stat(pid) and procs.proc_stat(pid).state == "T":
                os.kill(pid, signal.SIGKILL)
        assert hung and hung[0]["instance"] == "echo_0_0", server.events
        assert hung[0]["cause"].startswith("frozen for ")
        assert hung[0]["cause"].endswith("(none of its threads ran; state T); killed")
        assert wait_for(lambda: events_of(server, "recovered"), RECOVERY_LIMIT_S)
        assert wait_for(server.models_ready, 5)
        np.testing.assert_array_equal(infer_echo(server.grpc_url), [[2, 2]])
    assert nothing_left(server.shm_prefix)


def test_model_that_keeps_dying_is_left_unloaded(tmp_path):
    server = TritonServer(write_tiny_repo(tmp_path / "repo", ["echo", "dies"]),
                          log_file=tmp_path / "server.log")  # kept: a model was given up
    deadline = time.monotonic() + 45
    with server:
        while not server.given_up_models and time.monotonic() < deadline:
            handled = len(events_of(server, "recovered")) + len(events_of(server, "gave_up"))
            with pytest.raises(Exception, match="is not healthy"):
                infer_echo(server.grpc_url, "dies", timeout=10)
            wait_for(lambda: len(events_of(server, "recovered"))
                     + len(events_of(server, "gave_up")) > handled, 15)
        assert server.given_up_models == {"dies"}, server.events
        assert len(events_of(server, "stub_died")) == 4
        assert len(events_of(server, "recovered")) == 3
        gave_up, = events_of(server, "gave_up")
        assert gave_up["model"] == "dies" and gave_up["deaths"] == 4
        assert "died 4 times within 60 s; left unloaded" in gave_up["message"]
        # UNLOADING for good: Triton 2.51 never finishes unloading a version whose dead stub
        # got a request; either way it is not READY and the server says not ready.
        assert server.model_states().get("dies") in ("UNLOADING", "UNAVAILABLE")
        assert server.admin.request("GET", "/v2/health/ready", admin=False)[0] != 200
        assert not server.models_ready()
        assert not stubs_of(server.pid, "dies")
        np.testing.assert_array_equal(infer_echo(server.grpc_url), [[2, 2]])  # still serves
        count = len(server.events)
        time.sleep(1.5)
        assert len(server.events) == count  # not restarted any more
    assert nothing_left(server.shm_prefix)


# ----------------------------------------------------------------------------- the CLI
def test_cli_logs_the_recovery(tmp_path):
    process = start_cli(tmp_path, ["echo"])
    prefix = f"towhee_rt_{process.pid}_0_"
    try:
        out, err = _Lines(process.stdout), _Lines(process.stderr)
        shown = out.until("Press Ctrl-C to stop", 60)
        assert "supervision: a model whose stub dies or hangs is reloaded" in shown, shown
        (stub_pid,) = processes_using(prefix)
        os.kill(stub_pid, signal.SIGKILL)
        logged = err.until("is ready again after", 20)
        assert f"model echo: stub echo_0_0 (pid {stub_pid}) killed by SIGKILL" in logged, logged
        assert "model echo is ready again after " in logged
        assert "(unloaded and loaded again; echo_0_0 killed by SIGKILL)" in logged
        np.testing.assert_array_equal(infer_echo(grpc_url_of(shown)), [[2, 2]])
        process.send_signal(signal.SIGTERM)
        assert process.wait(40) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert nothing_left(prefix, timeout=0.5)


def test_cli_exits_1_when_a_model_keeps_dying(tmp_path):
    process = start_cli(tmp_path, ["dies"])
    prefix = f"towhee_rt_{process.pid}_0_"
    try:
        out, err = _Lines(process.stdout), _Lines(process.stderr)
        url = grpc_url_of(out.until("Press Ctrl-C to stop", 60))
        deadline = time.monotonic() + 45
        while process.poll() is None and time.monotonic() < deadline:
            try:
                infer_echo(url, "dies", timeout=10)
            except Exception:  # noqa: BLE001 - it dies on every request
                pass
            time.sleep(0.3)
        assert process.wait(40) == 1
        logged = err.rest()
        assert "model dies died 4 times within 60 s; left unloaded" in logged, logged
        assert "error: model dies kept dying and was left unloaded; stopped tritonserver" \
            in logged
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert nothing_left(prefix, timeout=0.5)


# ---------------------------------------------------------------- the image's supervisor
def test_supervisor_script_as_the_image_runs_it(tmp_path):
    """The supervisor package the image's entrypoint runs, standalone (``python -I -S DIR``:
    no towhee_rt, no site-packages), around the embedded tritonserver: it reloads a hung stub
    that a request reached (which pins the old version in Triton 2.51), stops on SIGTERM
    without waiting the exit timeout for the pinned version, and leaves nothing behind."""
    from towhee_rt.triton.docker import write_supervisor
    from towhee_rt.triton.embedded import find_tritonserver

    package = write_supervisor(tmp_path)
    binary, backend_dir, env = find_tritonserver()
    repo = write_tiny_repo(tmp_path / "repo", ["echo"])
    http, grpc, metrics = (find_free_port() for _ in range(3))
    argv = [str(binary)] + server_flags(str(repo), grpc_port=grpc, http_port=http,
                                        metrics_port=metrics, gpu_metrics=False,
                                        admin_key="adm") + [
        f"--backend-directory={backend_dir}"]
    process = subprocess.Popen([sys.executable, "-I", "-S", str(package), "run", "--",
                                *argv], env=env, stderr=subprocess.PIPE, text=True,
                               cwd=tmp_path)
    prefix = f"towhee_rt_{process.pid}_0_"
    admin = TritonAdmin(f"127.0.0.1:{http}", key_headers("http", admin_key="adm"))
    try:
        err = _Lines(process.stderr)
        assert wait_for(lambda: admin.ready(), 60), err.rest()
        (stub_pid,) = processes_using(prefix)
        os.kill(stub_pid, signal.SIGSTOP)
        with pytest.raises(Exception, match="is not healthy"):
            infer_echo(f"127.0.0.1:{grpc}")
        logged = err.until("is ready again after", 20)
        assert (f"towhee_rt supervisor WARNING: model echo: stub echo_0_0 (pid {stub_pid}) "
                "frozen for ") in logged, logged
        assert wait_for(lambda: admin.ready(), 10)
        np.testing.assert_array_equal(infer_echo(f"127.0.0.1:{grpc}"), [[2, 2]])
        stopping = time.monotonic()
        process.send_signal(signal.SIGTERM)
        assert process.wait(40) == 0
        assert time.monotonic() - stopping < EXIT_TIMEOUT_SECS
        logged = err.rest()
        assert "every model but 1 version(s) that cannot unload" in logged, logged
        assert "tritonserver exited (code 0)" in logged
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert nothing_left(prefix, timeout=0.5)
