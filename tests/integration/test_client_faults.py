"""The client through faults and overload, against a real tritonserver (loopback, always stopped).

* a server killed under load is one ServerUnavailableError for the call, not an error per item;
* a server restarted on the same ports is picked up within the retries;
* ``batch_size`` over the served model's ``max_batch_size`` gives requests of that size;
* the client's deadline travels with each request: requests the client gave up on are dropped
  from the server's queues (counted with Triton's statistics), and fail as
  DeadlineExceededError; without it (the control) the server computes every one;
* a full queue answers at once, as ServerBusyError;
* requests overlap by default (``concurrency=4`` in every mode): the client's own records and
  the server's queue statistics show more than one in flight.

The repository is hand-written (like ``_tiny_repo``) so that the timings are the model's own: an
ensemble ``pipeline`` chains ``double`` (2x, fast) into ``slow`` (2x, sleeps ``delay_s`` per
request, one instance, one request per execution), with towhee_rt's queue policy (REJECT,
``allow_timeout_override``); ``tight`` is the same with ``max_queue_size: 1`` and a 200 ms
queue timeout (``slow_tight``).
"""
from __future__ import annotations

import json
import threading
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import pytest

import towhee_rt as towhee
from towhee_rt.errors import (DeadlineExceededError, ItemError, PipelineError, ServerBusyError,
                              ServerUnavailableError)
from towhee_rt.triton.flags import key_headers
from towhee_rt.triton.ports import find_free_port
from towhee_rt.triton.server import TritonServer

pytestmark = pytest.mark.integration

MODEL = '''
import json
import time

import triton_python_backend_utils as pb_utils


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"]).get("parameters", {})
        self.delay = float(params.get("delay_s", {}).get("string_value", "0"))

    def execute(self, requests):
        out = []
        for request in requests:
            x = pb_utils.get_input_tensor_by_name(request, "INPUT0").as_numpy()
            time.sleep(self.delay)
            out.append(pb_utils.InferenceResponse([pb_utils.Tensor("OUTPUT0", x * 2)]))
        return out
'''
STEP_CONFIG = '''name: "{name}"
backend: "python"
max_batch_size: 8
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
instance_group [ {{ kind: KIND_CPU count: 1 }} ]
dynamic_batching {{
  {preferred}
  default_queue_policy {{
    timeout_action: REJECT default_timeout_microseconds: {timeout_us}
    allow_timeout_override: true max_queue_size: {queue}
  }}
}}
parameters {{ key: "delay_s" value: {{ string_value: "{delay}" }} }}
'''
ENSEMBLE_CONFIG = '''name: "{name}"
platform: "ensemble"
max_batch_size: 4
input [ {{ name: "INPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
output [ {{ name: "OUTPUT0" data_type: TYPE_FP32 dims: [ -1 ] }} ]
ensemble_scheduling {{ step [
  {{ model_name: "double" model_version: -1
    input_map {{ key: "INPUT0" value: "INPUT0" }}
    output_map {{ key: "OUTPUT0" value: "doubled" }} }},
  {{ model_name: "{slow}" model_version: -1
    input_map {{ key: "INPUT0" value: "doubled" }}
    output_map {{ key: "OUTPUT0" value: "OUTPUT0" }} }}
] }}
'''
SLOW_S = 0.1    # slow: seconds per request
TIGHT_S = 1.0   # slow_tight: seconds per request


def write_repo(path: Path) -> Path:
    """The repository described in the module docstring."""
    # Long queue timeouts in pipeline's steps: only a client's deadline drops requests there
    # (also when other work on the machine slows the server down).
    steps = {"double": (0.0, 64, 30_000_000), "slow": (SLOW_S, 64, 30_000_000),
             "slow_tight": (TIGHT_S, 1, 200_000)}
    for name, (delay, queue, timeout_us) in steps.items():
        (path / name / "1").mkdir(parents=True)
        (path / name / "1" / "model.py").write_text(MODEL)
        # The slow steps run one request per execution: executions count requests computed.
        preferred = "preferred_batch_size: [ 1 ]" if delay else ""
        (path / name / "config.pbtxt").write_text(STEP_CONFIG.format(
            name=name, delay=delay, queue=queue, timeout_us=timeout_us, preferred=preferred))
    for name, slow in (("pipeline", "slow"), ("tight", "slow_tight")):
        (path / name / "1").mkdir(parents=True)
        (path / name / "config.pbtxt").write_text(ENSEMBLE_CONFIG.format(name=name, slow=slow))
    return path


def _items(n: int):
    return [np.array([k, -k], dtype=np.float32) for k in range(n)]


def _expected(items):
    return [4 * x for x in items]


def _stats(server: TritonServer, model: str) -> Dict[str, int]:
    """Triton's counters for ``model``: requests that ran (``success``), requests that failed
    or were dropped (``fail``), model executions and the time requests waited in its queue
    (``queue_ns``)."""
    request = urllib.request.Request(f"http://{server.http_url}/v2/models/{model}/stats",
                                     headers=key_headers("http", admin_key=server.admin_key))
    with urllib.request.urlopen(request, timeout=10) as response:
        stats = json.load(response)["model_stats"][0]
    return {"success": stats["inference_stats"]["success"]["count"],
            "fail": stats["inference_stats"]["fail"]["count"],
            "executions": stats["execution_count"],
            "queue_ns": stats["inference_stats"]["queue"]["ns"]}


def _settled(server: TritonServer, before: Dict[str, int], target: Optional[int] = None,
             quiet_s: float = 2.0, limit_s: float = 30.0) -> Dict[str, int]:
    """The change of ``slow``'s counters since ``before``, once ``target`` requests ran, or
    (no target) once nothing has changed for ``quiet_s``: Triton drops expired requests only
    when it next looks at a queue, so the counts lag behind the client."""
    deadline = time.monotonic() + limit_s
    last, quiet_since = None, time.monotonic()
    while True:
        now = _stats(server, "slow")
        delta = {key: now[key] - before[key] for key in now}
        if delta != last:
            last, quiet_since = delta, time.monotonic()
        if target is not None and delta["success"] >= target:
            return delta
        if target is None and time.monotonic() - quiet_since >= quiet_s:
            return delta
        if time.monotonic() > deadline:
            return delta
        time.sleep(0.1)


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    return write_repo(tmp_path_factory.mktemp("faults") / "repo")


@pytest.fixture(scope="module")
def server(repo):
    with towhee.serve(repo, grpc_port=0, http_port=0, metrics_port=0) as srv:
        yield srv


def _ports() -> Dict[str, int]:
    ports: Dict[str, int] = {}
    while len(set(ports.values())) < 3:
        ports = {name: find_free_port() for name in ("grpc_port", "http_port", "metrics_port")}
    return ports


def _url(srv: TritonServer, protocol: str) -> str:
    return srv.grpc_url if protocol == "grpc" else srv.http_url


# ----------------------------------------------------------------------------- server down
@pytest.mark.timeout(90)
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_server_killed_under_load_is_one_unavailable_error(repo, protocol):
    # Killed, not stopped: a graceful stop lets the requests on open connections finish
    # within tritonserver's exit timeout, and this load would finish with them.
    items = _items(60)  # 60 x 0.1 s: still running when the server dies
    srv = TritonServer(repo)
    raised = []
    try:
        srv.start().wait_ready()
        url = _url(srv, protocol)

        def call():
            try:
                towhee.dc(items).remote(url=url, protocol=protocol, mode="async_infer",
                                        concurrency=4, timeout=20, retries=2, backoff=0.05,
                                        errors="return")
            except Exception as exc:  # noqa: BLE001 - what the call raised is the result
                raised.append(exc)

        caller = threading.Thread(target=call)
        caller.start()
        time.sleep(1.0)
        srv.kill()
        caller.join(60)
        assert not caller.is_alive()
    finally:
        srv.stop()
    assert len(raised) == 1, raised
    error = raised[0]
    assert isinstance(error, ServerUnavailableError) and not isinstance(error, PipelineError)
    assert error.url == url and error.protocol == protocol and error.attempts == 3
    assert f"the Triton server at {url} ({protocol}) is unavailable" in str(error)
    assert "towhee-rt serve" in str(error) and f"--{protocol}-port" in str(error)


@pytest.mark.timeout(60)
def test_a_server_that_is_not_there_is_one_unavailable_error_at_once():
    url = f"127.0.0.1:{find_free_port()}"
    start = time.monotonic()
    with pytest.raises(ServerUnavailableError, match=r"cannot read model 'pipeline': the "
                                                     r"Triton server at .* is unavailable"):
        towhee.dc(_items(3)).remote(url=url, retries=2, backoff=0.05)
    assert time.monotonic() - start < 2


# -------------------------------------------------------------------------- server restart
@pytest.mark.timeout(120)
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_server_restarted_on_the_same_ports_is_picked_up(repo, protocol):
    ports = _ports()
    first, second = TritonServer(repo, **ports), TritonServer(repo, **ports)
    records = []
    try:
        first.start().wait_ready()
        client = towhee.Client(_url(first, protocol), protocol=protocol, timeout=60,
                               retries=10, backoff=0.25, on_request=records.append)
        items = _items(8)
        with client:
            assert all(np.array_equal(a, b) for a, b in zip(client.infer(items),
                                                              _expected(items)))
            first.kill()  # a crash (a graceful stop waits for idle HTTP keep-alive clients)
            second.start()  # not waited for: the client's retries have to cover the start
            start = time.monotonic()
            results = client.infer(items, mode="async_infer", concurrency=2)
            took = time.monotonic() - start
    finally:
        first.stop()
        second.stop()
    assert all(np.array_equal(a, b) for a, b in zip(results, _expected(items)))
    failed = [r for r in records if r.error is not None]
    assert failed and len(records) == len(items) * 2 + len(failed)
    assert took < sum(client.retry.schedule(draw=lambda: 1.0))  # within the retry budget


# ------------------------------------------------------------------------------ batch size
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_batch_size_over_max_batch_size_gives_requests_of_max_batch_size(server, protocol):
    records = []
    items = _items(10)
    with towhee.Client(_url(server, protocol), protocol=protocol,
                       on_request=records.append) as client:
        assert client.max_batch_size == 4  # the ensemble's, below its steps' 8
        results = client.infer(items, batch_size=16)
    assert all(np.array_equal(a, b) for a, b in zip(results, _expected(items)))
    # (sent concurrently: in any order)
    assert sorted((r.items, r.error) for r in records) == [(2, None), (4, None), (4, None)]


@pytest.mark.timeout(90)
def test_a_long_lived_client_does_not_gather_connections(server):
    """Each async call runs on fresh worker threads; their connections close with the call."""
    items = _items(8)
    with towhee.Client(server.grpc_url) as client:
        for _ in range(5):
            results = client.infer(items, mode="async_infer", concurrency=4)
            assert all(np.array_equal(a, b) for a, b in zip(results, _expected(items)))
        # the caller's own thread keeps the one it read the model with
        assert len(client._transport.connections) == 1


# -------------------------------------------------------------------------------- deadline
def _send_without_deadline(server: TritonServer, items, timeout: float) -> int:
    """Send ``items`` at once over HTTP, the client giving up after ``timeout`` s but the
    request carrying no deadline (as towhee_rt's client did before); how many were answered.
    (HTTP: a gRPC client's cancellation reaches queued requests in some configurations.)"""
    import tritonclient.http as httpclient

    def send(x) -> bool:
        client = httpclient.InferenceServerClient(server.http_url, network_timeout=timeout)
        tensor = httpclient.InferInput("INPUT0", [1, 2], "FP32")
        tensor.set_data_from_numpy(x[None])
        try:
            client.infer("pipeline", [tensor])
            return True
        except Exception:  # noqa: BLE001 - counted
            return False
        finally:
            client.close()

    with ThreadPoolExecutor(len(items)) as pool:
        return sum(pool.map(send, items))


@pytest.mark.timeout(120)
def test_requests_past_the_clients_deadline_are_dropped_not_computed(server):
    sent, timeout = 30, 0.5
    # Control: the client gives up after 0.5 s, yet the server computes every request.
    before = _stats(server, "slow")
    answered = _send_without_deadline(server, _items(sent), timeout)
    control = _settled(server, before, target=sent)
    assert answered < sent / 4 and control["success"] == sent
    report = [f"control (no deadline sent): {answered} answered, {control['success']} computed"]
    for protocol in ("http", "grpc"):
        # towhee_rt's client sends its deadline: what is still queued then is dropped, in the
        # ensemble's second step too (Triton hands the request's timeout to every step).
        before = _stats(server, "slow")
        results = towhee.dc(_items(sent)).remote(url=_url(server, protocol), protocol=protocol,
                                                 mode="async_infer", concurrency=sent,
                                                 timeout=timeout, errors="return")
        delta = _settled(server, before)
        computed, executions = delta["success"], delta["executions"]
        late = [r for r in results if isinstance(r, DeadlineExceededError)]
        done = [r for r in results if not isinstance(r, ItemError)]
        report.append(f"{protocol}: {len(done)} answered, {len(late)} late; server computed "
                      f"{computed} ({executions} executions), dropped {sent - computed}")
        assert len(done) + len(late) == sent
        assert computed <= sent / 4 and executions <= sent / 4
        assert "no answer within the client's timeout=0.5s" in str(late[0])
    print(f"\n{sent} requests at once, {SLOW_S} s each on one instance, timeout {timeout} s: "
          + "; ".join(report))


# ------------------------------------------------------------------------------ full queue
@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_full_queue_is_a_prompt_busy_error(server, protocol):
    sent = 8
    arrived = {}
    start = time.monotonic()
    with towhee.Client(_url(server, protocol), model_name="tight", protocol=protocol,
                       timeout=10, backoff=0.1) as client:
        for index, result in client.stream(_items(sent), concurrency=sent):
            arrived[index] = (result, time.monotonic() - start)
    busy = sorted(t for r, t in arrived.values() if isinstance(r, ServerBusyError))
    ok = sorted(t for r, t in arrived.values() if not isinstance(r, ItemError))
    print(f"\nfull queue ({protocol}): {len(busy)} of {sent} busy, after "
          f"{', '.join(f'{t:.2f}' for t in busy)} s; {len(ok)} ok after "
          f"{', '.join(f'{t:.2f}' for t in ok)} s (service time {TIGHT_S} s)")
    assert len(busy) + len(ok) == sent and len(busy) >= sent / 2 and ok
    assert np.median(busy) < TIGHT_S <= ok[0]
    error = next(r for r, _ in arrived.values() if isinstance(r, ServerBusyError))
    assert error.kind == "busy" and "the server is busy" in str(error)
    assert "Exceeds maximum queue size" in str(error) or "Request timeout" in str(error)


# ------------------------------------------------------------------------ default concurrency
def _most_in_flight(spans) -> int:
    """The most of ``spans`` (start, end) open at one moment."""
    return max(sum(1 for a, b in spans if a <= start < b) for start, _ in spans)


@pytest.mark.timeout(90)
def test_requests_overlap_by_default_in_every_mode(server):
    """``slow`` computes one request at a time (0.1 s each): requests sent together wait in its
    queue, requests sent one after another do not."""
    items = _items(8)
    spans = []

    def record(request):
        now = time.monotonic()
        spans.append((now - request.seconds, now))

    with towhee.Client(server.grpc_url, on_request=record) as client:
        for mode in ("infer", "async_infer"):
            spans.clear()
            results = client.infer(items, mode=mode)
            assert all(np.array_equal(a, b) for a, b in zip(results, _expected(items)))
            assert len(spans) == len(items) and _most_in_flight(spans) == 4, (mode, spans)
        spans.clear()
        client.infer(items, concurrency=1)
        assert _most_in_flight(spans) == 1

    def queued_s(**kwargs) -> float:
        """Seconds the requests of one remote() call waited in slow's queue, in all."""
        before = _stats(server, "slow")
        results = towhee.dc(items).remote(url=server.grpc_url, **kwargs)
        assert all(np.array_equal(a, b) for a, b in zip(results, _expected(items)))
        return _settled(server, before, target=len(items))["queue_ns"] / 1e9

    default, one_at_a_time = queued_s(), queued_s(concurrency=1)
    print(f"\nremote() of 8 requests of {SLOW_S} s: queued {default:.2f} s in all by default, "
          f"{one_at_a_time:.2f} s with concurrency=1")
    assert default > 4 * SLOW_S > 4 * one_at_a_time
