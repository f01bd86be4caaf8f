"""How the client reads failures and retries them (no Triton server here): the backoff schedule,
which errors are transient, one ServerUnavailableError per call, busy and timed-out requests
failing per item, every retry inside the request's timeout, nothing sent before first use, and
requests sent concurrently by default.

The client is a real :class:`~towhee_rt.Client` whose transport answers from a script
(:func:`tests.client_helpers.offline_client`) with the error texts below.

Error texts are the ones Triton 2.51 and tritonclient 2.73 produce (measured on the embedded
server: refused port, killed server, full queue, queue timeout, client deadline).
"""
from __future__ import annotations

import inspect
import pickle
import threading
import time

import pytest
from geventhttpclient.response import HTTPConnectionClosed
from tritonclient.utils import InferenceServerException

from towhee_rt.backends.wire import ItemFailure, encode_failures
from towhee_rt.client import Client
from towhee_rt.client.failures import BUSY, OTHER, REFUSED, TIMEOUT, UNAVAILABLE, classify_error
from towhee_rt.client.inputs import ServedInput, max_batch_size
from towhee_rt.client.retry import RetryPolicy
from towhee_rt.errors import (ClientError, ConfigError, DeadlineExceededError, ItemError,
                              PipelineError, ServerBusyError, ServerUnavailableError)

from ..client_helpers import offline_client

IMAGE = ServedInput("image")
REFUSED_GRPC = ("failed to connect to all addresses; last error: UNKNOWN: ipv4:127.0.0.1:40921: "
                "Failed to connect to remote host: Connection refused")
QUEUE_FULL = "[request id: <id_unknown>] Exceeds maximum queue size"
FAST = {"retries": 3, "backoff": 0.01}


def _grpc(status: str, text: str) -> InferenceServerException:
    return InferenceServerException(text, status=f"StatusCode.{status}")


def _http(status: int, text: str) -> InferenceServerException:
    return InferenceServerException(text, status=str(status))


# ------------------------------------------------------------------------ backoff schedule
def test_waits_double_up_to_a_ceiling_with_jitter_between_half_and_all():
    policy = RetryPolicy(retries=6, backoff=0.25, max_backoff=2.0)
    assert policy.schedule(draw=lambda: 0.999999) == pytest.approx(
        [0.25, 0.5, 1.0, 2.0, 2.0, 2.0], rel=1e-5)
    assert policy.schedule(draw=lambda: 0.0) == [0.125, 0.25, 0.5, 1.0, 1.0, 1.0]
    for _ in range(200):  # random draws stay inside the band
        for k, wait in enumerate(policy.schedule()):
            ceiling = min(2.0, 0.25 * 2 ** k)
            assert ceiling / 2 <= wait <= ceiling
    assert RetryPolicy(retries=0).schedule() == []


def test_the_default_budget_spans_a_server_restart_and_stays_bounded():
    policy = RetryPolicy()
    assert policy.retries == 5
    assert 3.5 < sum(policy.schedule(draw=lambda: 0.0)) < sum(policy.schedule(lambda: 1.0)) < 8


@pytest.mark.parametrize("kwargs, message", [
    ({"retries": -1}, "retries must be an integer >= 0"),
    ({"retries": 1.5}, "retries must be an integer >= 0"),
    ({"retries": True}, "retries must be an integer >= 0"),
    ({"backoff": 0}, "backoff must be a number of seconds > 0"),
    ({"max_backoff": "1"}, "max_backoff must be a number of seconds > 0"),
])
def test_bad_retry_settings_are_config_errors(kwargs, message):
    with pytest.raises(ConfigError, match=message):
        RetryPolicy(**kwargs)


def test_only_unreachable_and_busy_servers_are_retried_and_busy_ones_once():
    policy = RetryPolicy(retries=3)
    assert [policy.should_retry(UNAVAILABLE, k) for k in range(5)] == [True] * 3 + [False] * 2
    assert policy.should_retry(BUSY, 0, 0) and not policy.should_retry(BUSY, 1, 1)
    assert policy.should_retry(BUSY, 1, 0)  # an unreachable server before does not count
    assert not RetryPolicy(retries=0).should_retry(BUSY, 0, 0)
    for kind in (TIMEOUT, REFUSED, OTHER):
        assert not policy.should_retry(kind, 0, 0)


# -------------------------------------------------------------------- classifying failures
@pytest.mark.parametrize("exc, kind", [
    (_grpc("UNAVAILABLE", REFUSED_GRPC), UNAVAILABLE),
    (_grpc("UNAVAILABLE", "Stream removed (Socket closed)"), UNAVAILABLE),
    (ConnectionRefusedError(111, "Connection refused"), UNAVAILABLE),
    (ConnectionResetError(104, "Connection reset by peer"), UNAVAILABLE),
    (BrokenPipeError(32, "Broken pipe"), UNAVAILABLE),
    (OSError(113, "No route to host"), UNAVAILABLE),
    (HTTPConnectionClosed("connection closed."), UNAVAILABLE),
    (_http(503, "Server not ready"), UNAVAILABLE),
    (_grpc("UNAVAILABLE", QUEUE_FULL), BUSY),
    (_http(503, QUEUE_FULL), BUSY),
    (_grpc("UNAVAILABLE", "in ensemble 'pipeline', Request timeout expired"), BUSY),
    (_http(503, "Request timeout expired"), BUSY),
    (_grpc("DEADLINE_EXCEEDED", "Deadline Exceeded"), TIMEOUT),
    (TimeoutError("timed out"), TIMEOUT),
    (_grpc("UNAVAILABLE", "This protocol is restricted, expecting header "
                          "'triton-grpc-protocol-towhee-api-key'"), REFUSED),
    (_http(403, "This API is restricted, expecting header 'towhee-api-key'"), REFUSED),
    (_grpc("INVALID_ARGUMENT", encode_failures([ItemFailure(0, "op", "bad_input", "x")])),
     OTHER),
    (_grpc("NOT_FOUND", "Request for unknown model: 'nope' is not found"), OTHER),
    (_http(400, "inference request batch-size must be <= 4 for 'pipeline'"), OTHER),
    # A model the supervisor is reloading: sent again, it reaches the reloaded model.
    (_grpc("INTERNAL", "Stub process 'x' is not healthy."), UNAVAILABLE),
    (_http(404, "Request for unknown model: 'pipeline' has no available versions"), UNAVAILABLE),
    (ValueError("something else"), OTHER),
])
def test_failures_are_classified_by_what_they_mean(exc, kind):
    assert classify_error(exc) == kind


def test_max_batch_size_comes_from_the_model_config():
    assert max_batch_size({"max_batch_size": 8}) == 8
    assert max_batch_size({"max_batch_size": "16"}) == 16  # HTTP JSON may spell it as text
    assert max_batch_size({"max_batch_size": 0}) is None   # no batch dimension
    assert max_batch_size({}) is None and max_batch_size({"max_batch_size": "x"}) is None


# ----------------------------------------------------------------- retries through a client
class _Script:
    """Answers the offline client's requests: raises the scripted errors in turn, then
    answers each payload's length."""

    def __init__(self, *errors, forever=None):
        self.errors, self.forever = list(errors), forever
        self.timeouts, self.lock = [], threading.Lock()

    def __call__(self, url, payloads, timeout=None):
        with self.lock:
            self.timeouts.append(timeout)
            error = self.errors.pop(0) if self.errors else self.forever
        if error is not None:
            raise error
        return [len(p) for p in payloads]

    @property
    def calls(self):
        return len(self.timeouts)


def _client(script, **kwargs):
    return offline_client(IMAGE, answer=script, **{**FAST, **kwargs})


def test_a_server_back_within_the_retries_is_used_with_a_fresh_connection():
    script = _Script(_grpc("UNAVAILABLE", REFUSED_GRPC), ConnectionRefusedError(111, "refused"))
    client = _client(script)
    assert client.infer([b"abc"]) == [3]
    assert script.calls == 3
    # the model read's connection, then one per retry: each unreachable one closed
    assert [c.closed for c in client._transport.opened] == [True, True, False]
    client.close()
    assert client._transport.opened[-1].closed and len(client._transport.connections) == 0


def test_an_unreachable_server_is_one_error_for_the_whole_call():
    script = _Script(forever=_grpc("UNAVAILABLE", REFUSED_GRPC))
    client = _client(script)
    with pytest.raises(ServerUnavailableError) as info:
        client.infer([b"x"] * 8, mode="async_infer", concurrency=2, errors="return")
    error = info.value
    assert isinstance(error, ClientError) and not isinstance(error, ItemError)
    assert error.url == "127.0.0.1:1" and error.protocol == "grpc" and error.attempts == 4
    text = str(error)
    assert "127.0.0.1:1 (grpc) is unavailable (4 attempts over" in text
    assert "Connection refused" in text and "towhee-rt serve" in text
    assert "--grpc-port, 8001 by default" in text and "retries=" in text
    assert str(pickle.loads(pickle.dumps(error))) == text  # crosses process pools intact
    # The other requests stopped too: beside the failed one, at most the retries of the one
    # under way and a request started before the call stopped, not all eight.
    assert script.calls <= 3 * (FAST["retries"] + 1) < 8 * (FAST["retries"] + 1)


def test_with_one_request_at_a_time_the_rest_is_not_sent():
    script = _Script(forever=ConnectionRefusedError(111, "Connection refused"))
    client = _client(script, protocol="http")
    with pytest.raises(ServerUnavailableError, match=r"\(http\) is unavailable.*--http-port, "
                                                     r"8000 by default"):
        client.infer([b"a"] * 10, concurrency=1)
    assert script.calls == FAST["retries"] + 1


def test_a_busy_server_is_retried_once_then_its_items_fail_as_busy():
    script = _Script(forever=_grpc("UNAVAILABLE", QUEUE_FULL))
    client = _client(script)
    results = client.infer([b"a", b"b"], batch_size=2, errors="return")
    assert script.calls == 2
    assert [type(r) for r in results] == [ServerBusyError, ServerBusyError]
    assert [r.index for r in results] == [0, 1] and results[0].kind == "busy"
    text = str(results[1])
    assert text.startswith("item 1: request: the server is busy and turned the request away")
    assert "Exceeds maximum queue size" in text and "sent 2 times" in text
    assert "concurrency=" in text and "max_queue_size" in text
    with pytest.raises(PipelineError, match="2 of 2 items failed"):
        _client(_Script(forever=_grpc("UNAVAILABLE", QUEUE_FULL))).infer([b"a", b"b"],
                                                                          batch_size=2)


def test_a_busy_server_that_frees_up_answers_on_the_retry():
    script = _Script(_http(503, QUEUE_FULL))
    assert _client(script, protocol="http").infer([b"ab"]) == [2] and script.calls == 2


def test_a_request_out_of_time_fails_its_items_without_a_retry():
    script = _Script(forever=_grpc("DEADLINE_EXCEEDED", "Deadline Exceeded"))
    results = _client(script, timeout=2.0).infer([b"a", b"b"], errors="return")
    assert script.calls == 2  # one per item's request, none again
    assert all(isinstance(r, DeadlineExceededError) and r.kind == "timeout" for r in results)
    assert "no answer within the client's timeout=2s" in str(results[0])
    assert "Raise timeout=" in str(results[0])


def test_a_queue_timeout_at_the_clients_own_deadline_is_a_deadline():
    class Late(_Script):
        def __call__(self, url, payloads, timeout=None):
            time.sleep(timeout)  # the server answers when the deadline it was sent passes
            return super().__call__(url, payloads, timeout)

    script = Late(forever=_grpc("UNAVAILABLE", "in ensemble 'p', Request timeout expired"))
    (result,) = _client(script, timeout=0.2).infer([b"a"], errors="return")
    assert isinstance(result, DeadlineExceededError) and script.calls == 1


def test_retries_stay_inside_the_timeout_and_each_attempt_gets_what_is_left():
    script = _Script(forever=_grpc("UNAVAILABLE", REFUSED_GRPC))
    client = _client(script, retries=50, backoff=0.1, timeout=0.6)
    start = time.monotonic()
    with pytest.raises(ServerUnavailableError):
        client.infer([b"a"])
    assert time.monotonic() - start < 0.6
    assert 2 <= script.calls < 10
    assert script.timeouts[0] == pytest.approx(0.6, abs=0.05)
    assert all(0 < b < a for a, b in zip(script.timeouts, script.timeouts[1:]))


def test_item_failures_and_refusals_are_not_retried():
    failure = encode_failures([ItemFailure(0, "image_decode.cv2_rgb", "bad_input", "empty")])
    script = _Script(_grpc("INVALID_ARGUMENT", failure))
    (result,) = _client(script).infer([b"a"], errors="return")
    assert result.kind == "bad_input" and script.calls == 1
    script = _Script(forever=_grpc("UNAVAILABLE", "This protocol is restricted, expecting "
                                                  "header 'triton-grpc-protocol-towhee-api-key'"))
    with pytest.raises(ClientError, match="requires an API key"):
        _client(script).infer([b"a", b"b"], concurrency=1)
    assert script.calls == 1


def test_requests_hold_at_most_the_models_max_batch_size():
    script = _Script()
    sizes = []

    def send(url, payloads, timeout=None):
        sizes.append(len(payloads))
        return script(url, payloads, timeout)

    client = offline_client(IMAGE, answer=send, max_batch_size=4, **FAST)
    assert client.max_batch_size == 4
    assert client.infer([b"x" * k for k in range(1, 11)], batch_size=16) == list(range(1, 11))
    assert sorted(sizes) == [2, 4, 4]
    sizes.clear()
    client.infer([b"a"] * 5, batch_size=2, concurrency=1)
    assert sizes == [2, 2, 1]


def test_a_model_read_without_an_answer_is_unavailable_and_an_unknown_model_is_not():
    late = offline_client(IMAGE, timeout=0.5, models={"127.0.0.1:1": _grpc(
        "DEADLINE_EXCEEDED", "Deadline Exceeded")})
    with pytest.raises(ServerUnavailableError, match=r"cannot read model 'pipeline': .*"
                                                     r"no answer within timeout=0.5s"):
        late.served
    unknown = offline_client(IMAGE, models={"127.0.0.1:1": _grpc(
        "NOT_FOUND", "Request for unknown model: 'pipeline' is not found")})
    with pytest.raises(ClientError, match="unknown model.*Check the model name") as info:
        unknown.infer([b"a"])
    assert not isinstance(info.value, ServerUnavailableError)


# ------------------------------------------------------------ construction, default concurrency
def test_constructing_a_client_checks_its_arguments_and_sends_nothing():
    client = Client("127.0.0.1:1,127.0.0.1:2", model_name="m", protocol="http", timeout=3)
    assert client.urls == ("127.0.0.1:1", "127.0.0.1:2") and client.url == "127.0.0.1:1,127.0.0.1:2"
    assert len(client._transport.connections) == 0  # nothing opened, nothing read
    assert all(s.requests == 0 for s in client.replicas)
    assert not client.ready()  # nothing listens on port 1 or 2: not ready, no exception
    with pytest.raises(ConfigError, match="protocol must be one of"):
        Client("127.0.0.1:1", protocol="tcp")
    with pytest.raises(ConfigError, match="timeout must be a number of seconds > 0"):
        Client("127.0.0.1:1", timeout=0)
    with pytest.raises(ConfigError, match="retries must be an integer >= 0"):
        Client("127.0.0.1:1", retries=-1)
    parameters = inspect.signature(Client).parameters
    assert list(parameters)[:3] == ["url", "model_name", "protocol"]
    assert not any(p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) for p in parameters.values())


@pytest.mark.parametrize("mode", ["infer", "async_infer"])
def test_requests_are_sent_concurrently_by_default_in_every_mode(mode):
    in_flight, most = [0], [0]
    lock = threading.Lock()

    def slow(url, payloads, timeout=None):
        with lock:
            in_flight[0] += 1
            most[0] = max(most[0], in_flight[0])
        time.sleep(0.05)
        with lock:
            in_flight[0] -= 1
        return [len(p) for p in payloads]

    client = offline_client(IMAGE, answer=slow)
    start = time.monotonic()
    assert client.infer([b"x" * k for k in range(1, 9)], mode=mode) == list(range(1, 9))
    assert most[0] == 4  # the default concurrency
    assert time.monotonic() - start < 8 * 0.05
    most[0] = 0
    client.infer([b"a"] * 4, mode=mode, concurrency=1)
    assert most[0] == 1
