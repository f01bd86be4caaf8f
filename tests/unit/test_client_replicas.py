"""The multi-replica client without a server: how urls are read, which replica gets a request
(least in flight, ties in turn), taking a replica out and back, failover of requests to an
unreachable replica, busy replicas passed over, one error when all are down, and a replica that
serves another model refused.

The client is :func:`tests.client_helpers.offline_client` turned into a ReplicaClient; its
``_send`` (and, where the model is read, ``_get_metadata``/``_get_config``) answers per replica
with the error texts tritonclient gives (see test_client_retry.py).
"""
from __future__ import annotations

import threading
import time
from typing import Dict, List, Optional, Tuple

import pytest

from towhee_rt.client import Client
from towhee_rt.client_failover import ReplicaClient
from towhee_rt.client_inputs import ServedInput
from towhee_rt.client_replicas import (ReplicaSet, model_signature, parse_urls,
                                       signature_changes)
from towhee_rt.client_retry import BUSY, OTHER, UNAVAILABLE, RetryPolicy
from towhee_rt.errors import ClientError, ConfigError, ServerBusyError, ServerUnavailableError

from ..client_helpers import offline_client
from .test_client_retry import QUEUE_FULL, REFUSED_GRPC, _grpc

IMAGE = ServedInput("image")
FAST = RetryPolicy(retries=3, backoff=0.01)
#: Loopback ports nothing listens on: the tests' reads and requests never reach the network
#: (they are answered by the stand-ins below), and would be refused at once if they did.
URLS = ("127.0.0.1:1", "127.0.0.1:2", "127.0.0.1:3")
A, B, C = URLS


# ------------------------------------------------------------------------------------ urls
@pytest.mark.parametrize("url, urls", [
    ("127.0.0.1:8001", ["127.0.0.1:8001"]),
    ("grpc://127.0.0.1:8001", ["127.0.0.1:8001"]),
    ("a:1,b:2", ["a:1", "b:2"]),
    (" http://a:1 , b:2 ", ["a:1", "b:2"]),
    (["a:1", "b:2", "c:3"], ["a:1", "b:2", "c:3"]),
    (("a:1",), ["a:1"]),
])
def test_urls_are_one_string_a_comma_list_or_a_sequence(url, urls):
    assert parse_urls(url) == urls


@pytest.mark.parametrize("url, message", [
    ("", "non-empty 'host:port'"),
    ("a:1,", "non-empty 'host:port'"),
    (["a:1", 8001], "non-empty 'host:port'"),
    ([], "at least one"),
    ("a:1,a:1", "'a:1' is given twice"),
    ({"a:1"}, "url must be 'host:port', a list or tuple"),
    (None, "url must be 'host:port', a list or tuple"),
])
def test_bad_urls_are_config_errors(url, message):
    with pytest.raises(ConfigError, match=message):
        parse_urls(url)


def test_one_url_is_the_one_server_client_and_several_a_replica_client():
    for one in ("a:1", ["a:1"], "grpc://a:1"):
        assert type(Client.__new__(Client, one)) is Client
    for several in ("a:1,b:2", ["a:1", "b:2"], ("a:1", "b:2", "c:3")):
        assert type(Client.__new__(Client, several)) is ReplicaClient


# ------------------------------------------------------------------------- choice policy
class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _set(retry: RetryPolicy = RetryPolicy(backoff=1.0, max_backoff=4.0)) -> Tuple[ReplicaSet,
                                                                                   Clock]:
    clock = Clock()
    return ReplicaSet(URLS, retry, clock=clock, draw=lambda: 0.999999), clock


def _urls(replicas) -> List[str]:
    return [r.url for r in replicas]


def test_requests_go_to_the_fewest_in_flight_ties_in_turn():
    pool, _ = _set()
    held = [pool.acquire() for _ in range(3)]
    assert _urls(held) == [A, B, C]  # all idle: in turn
    more = [pool.acquire() for _ in range(3)]
    assert _urls(more) == [A, B, C]  # one each in flight: in turn again
    pool.release(held[1])
    assert pool.acquire().url == B  # B has the fewest now
    for replica in (more[0], more[2]):
        pool.release(replica)
    # A 1, B 2, C 1 in flight: A and C tie, the turn after B is C
    assert [s.in_flight for s in pool.stats()] == [1, 2, 1]
    assert pool.acquire().url == C


def test_sequential_requests_go_round_robin():
    pool, _ = _set()
    seen = []
    for _ in range(7):
        replica = pool.acquire()
        seen.append(replica.url)
        pool.release(replica)
    assert seen == [A, B, C, A, B, C, A]
    assert [s.requests for s in pool.stats()] == [3, 2, 2]


def test_avoid_passes_over_a_replica_unless_it_is_the_only_one():
    pool, _ = _set()
    assert pool.acquire(avoid=A).url == B
    for replica in (pool.acquire(), pool.acquire()):  # C, then A
        pool.release(replica, UNAVAILABLE, "refused")
    pool.release(pool.acquire(avoid=B), None)  # only B is up: B
    assert pool.usable_besides(B) is False and pool.usable_besides(A) is True


def test_an_unreachable_replica_is_taken_out_for_a_backoff_then_tried_once():
    pool, clock = _set()
    a = pool.acquire()
    pool.release(a, UNAVAILABLE, "connection refused")
    stats = pool.stats()[0]
    assert (stats.up, stats.downs, stats.failures, stats.last_error) == (
        False, 1, 1, "connection refused")
    assert _urls(pool.acquire() for _ in range(4)) == [B, C, B, C]
    clock.now += 0.99  # backoff: 1 s (draw 1.0)
    assert A not in _urls(pool.acquire() for _ in range(2))
    clock.now += 0.02
    trial = pool.acquire()
    assert trial.url == A  # 0 in flight against 3 each: its trial
    assert A not in _urls(pool.acquire() for _ in range(3))  # one trial at a time
    pool.release(trial, UNAVAILABLE, "still refused")
    assert pool.stats()[0].downs == 2
    clock.now += 1.99  # second backoff: 2 s
    assert A not in _urls([pool.acquire()])
    clock.now += 0.02
    trial = pool.acquire()
    assert trial.url == A
    pool.release(trial)  # answered: back up, the backoff starts over
    assert pool.stats()[0].up and a.streak == 0 and a.down_until is None


def test_requests_on_a_replica_already_out_do_not_push_its_comeback_back():
    pool, clock = _set()
    held = [pool.acquire() for _ in range(6)]  # two on each
    pool.release(held[0], UNAVAILABLE, "reset")
    until = held[0].down_until
    clock.now += 0.5
    pool.release(held[3], UNAVAILABLE, "reset")  # A's other request, sent before it went down
    assert held[0].down_until == until and pool.stats()[0].downs == 1
    assert pool.stats()[0].failures == 2


def test_busy_and_other_failures_count_but_keep_the_replica_up():
    pool, _ = _set()
    for kind in (BUSY, OTHER):
        pool.release(pool.acquire(avoid=B), kind, "x")
    assert [(s.up, s.failures) for s in pool.stats()] == [(True, 1), (True, 0), (True, 1)]


def test_wait_is_until_the_first_replica_may_be_tried_again():
    pool, clock = _set()
    assert pool.wait_s() == 0.0
    for _ in range(3):
        pool.release(pool.acquire(), UNAVAILABLE, "refused")
        clock.now += 0.25
    assert pool.acquire() is None
    assert pool.wait_s() == pytest.approx(1.0 - 0.75, abs=1e-3)  # A went first


# ------------------------------------------------------------------------- model signature
META = {"name": "pipeline", "versions": ["1"], "platform": "ensemble",
        "inputs": [{"name": "image", "datatype": "BYTES", "shape": ["-1", "1"]}],
        "outputs": [{"name": "image_output", "datatype": "UINT8",
                     "shape": ["-1", "-1", "-1", "3"]}]}
CONFIG = {"name": "pipeline", "platform": "ensemble", "max_batch_size": 8,
          "parameters": {"towhee_input_kind": {"string_value": "image"}}}


def _meta(**changes) -> dict:
    out = {**META, "outputs": [dict(META["outputs"][0], **changes)]}
    return out


def test_the_signature_is_inputs_outputs_batch_size_and_input_kind():
    reference = model_signature(META, CONFIG)
    assert reference == {"inputs": [("image", "BYTES", ("-1", "1"))],
                         "outputs": [("image_output", "UINT8", ("-1", "-1", "-1", "3"))],
                         "max_batch_size": 8, "input kind": "image"}
    other_version = {**META, "versions": ["2"]}  # versions and names alone do not matter
    assert signature_changes(reference, model_signature(other_version, CONFIG)) == []
    changed = model_signature(_meta(datatype="FP32", shape=["-1", "512"]),
                              {**CONFIG, "max_batch_size": 16})
    changes = signature_changes(reference, changed)
    assert [c.split(":")[0] for c in changes] == ["max_batch_size", "outputs"]
    assert "8 != 16" in changes[0] and "'UINT8'" in changes[1] and "'FP32'" in changes[1]
    text = {**CONFIG, "parameters": {"towhee_input_kind": {"string_value": "text"}}}
    assert signature_changes(reference, model_signature(META, text)) == [
        "input kind: 'image' != 'text'"]


# --------------------------------------------------------------------- the client, offline
class Replicas:
    """``_send`` of an offline ReplicaClient: what each url does with a request (``None``:
    answers each payload's length; an exception: raised; a callable: called, then answered),
    and every request as ``(url, payloads)``."""

    def __init__(self, behaviour: Optional[Dict[str, object]] = None):
        self.behaviour = dict(behaviour or {})
        self.sent: List[Tuple[str, List[bytes]]] = []
        self.lock = threading.Lock()
        self.client: Optional[ReplicaClient] = None

    def __call__(self, payloads, timeout=None):
        url = self.client._serving_url()
        with self.lock:
            self.sent.append((url, list(payloads)))
        action = self.behaviour.get(url)
        if isinstance(action, BaseException):
            raise action
        if callable(action):
            action()
        return [len(p) for p in payloads]

    def count(self, url: str) -> int:
        return sum(1 for u, _ in self.sent if u == url)


def offline_replicas(send: Replicas, urls=URLS, retry: RetryPolicy = FAST,
                     checked: bool = True) -> ReplicaClient:
    """An offline client of ``urls`` whose requests go to ``send`` and whose model reads
    answer ``META``, ``CONFIG`` (see :func:`_reads`); ``checked``: every replica's model
    already read (the reference: the first url)."""
    client = object.__new__(ReplicaClient)
    client.__dict__.update(vars(offline_client(IMAGE, retry=retry)))
    client.urls, client.url = tuple(urls), ",".join(urls)
    client._start_replicas()
    _reads(client, {url: (META, CONFIG) for url in urls})
    if checked:
        client._reference = (urls[0], model_signature(META, CONFIG))
        for replica in client._pool:
            replica.checked = True
    client._send, send.client = send, client
    return client


def _items(n: int) -> List[bytes]:
    return [b"x" * (k + 1) for k in range(n)]


def test_a_dead_replicas_requests_go_to_the_others_and_every_item_comes_back_once():
    send = Replicas({B: _grpc("UNAVAILABLE", REFUSED_GRPC)})
    client = offline_replicas(send)
    items = _items(40)
    arrived = list(client.stream(items, concurrency=4))
    assert sorted(i for i, _ in arrived) == list(range(40))  # each index once
    assert dict(arrived) == {i: len(x) for i, x in enumerate(items)}
    assert client.infer(items, mode="async_infer", concurrency=4) == [len(x) for x in items]
    stats = {s.url: s for s in client.replicas}
    assert not stats[B].up and stats[B].downs >= 1 and "Connection refused" in stats[
        B].last_error
    answered = {url: send.count(url) for url in URLS}
    assert answered[A] + answered[C] == 80 and min(answered[A], answered[C]) >= 20
    # tried, taken out, tried again (one trial at a time) only after each backoff
    assert 1 <= answered[B] <= stats[B].downs + 1 and answered[B] < 16


def test_requests_are_spread_over_replicas_under_concurrency():
    send = Replicas({url: (lambda: time.sleep(0.005)) for url in URLS})
    client = offline_replicas(send)
    assert client.infer(_items(60), mode="async_infer", concurrency=3) == list(range(1, 61))
    shares = [send.count(url) / 60 for url in URLS]
    assert min(shares) >= 0.2, shares


def test_a_replica_back_after_its_backoff_is_used_again():
    down = {"on": True}

    def flaky():
        if down["on"]:
            raise ConnectionRefusedError(111, "refused")

    send = Replicas({B: flaky})
    client = offline_replicas(send)
    assert client.infer(_items(6)) == list(range(1, 7))
    assert not {s.url: s for s in client.replicas}[B].up
    down["on"] = False
    time.sleep(0.05)  # past FAST's first backoff (<= 10 ms)
    before = send.count(B)
    assert client.infer(_items(6)) == list(range(1, 7))
    assert send.count(B) - before >= 2 and all(s.up for s in client.replicas)


def test_records_name_the_replica_that_served_each_request():
    records = []
    send = Replicas({A: ConnectionResetError(104, "reset")})
    client = offline_replicas(send)
    client.on_request = records.append
    client._send = Client._send.__get__(client)  # the real _send, down to tritonclient

    class Answer:
        def as_numpy(self, name):
            import numpy as np
            return np.ones((1, 2), np.float32)

    class Connection:
        def __init__(self, url):
            self.url = url

        def infer(self, *args, **kwargs):
            if self.url == A:
                raise ConnectionResetError(104, "reset")
            return Answer()

        def close(self):
            pass

    client._client = lambda: Connection(client._serving_url())
    assert len(client.infer(_items(3))) == 3
    assert [(r.url, r.error is None) for r in records] == [(A, False), (B, True), (C, True),
                                                          (B, True)]


def test_every_replica_down_is_one_error_naming_every_url():
    refused = _grpc("UNAVAILABLE", REFUSED_GRPC)
    send = Replicas({url: refused for url in URLS})
    client = offline_replicas(send)
    start = time.monotonic()
    with pytest.raises(ServerUnavailableError) as caught:
        client.infer(_items(5), mode="async_infer", concurrency=2)
    error = caught.value
    assert error.urls == URLS and error.url == ",".join(URLS)
    assert f"none of the 3 Triton servers {', '.join(URLS)} (grpc) is unavailable" in str(error)
    assert "each url is a grpc endpoint" in str(error) and "Connection refused" in str(error)
    assert time.monotonic() - start < 2
    # every url tried; each request at most (retries + 1) x 3 sends, waits included
    assert all(send.count(url) >= 1 for url in URLS)
    assert 1 <= error.attempts <= (FAST.retries + 1) * 3
    assert len(send.sent) <= 5 * (FAST.retries + 1) * 3  # 5 requests of one item
    assert all(not s.up for s in client.replicas)


def test_a_busy_replica_is_passed_over_at_once_for_its_one_retry():
    send = Replicas({A: _grpc("UNAVAILABLE", QUEUE_FULL)})
    client = offline_replicas(send, urls=(A, B), retry=RetryPolicy(retries=3, backoff=5.0))
    start = time.monotonic()
    assert client.infer(_items(4)) == [1, 2, 3, 4]
    assert time.monotonic() - start < 1  # no 2.5-5 s pause: another replica was up
    assert all(s.up for s in client.replicas)
    # alone, a busy replica gets the one retry and then fails its items as busy
    lone = offline_replicas(Replicas({A: _grpc("UNAVAILABLE", QUEUE_FULL),
                                      B: ConnectionRefusedError(111, "refused")}),
                            urls=(A, B), retry=FAST)
    results = lone.infer(_items(2), errors="return")
    assert all(isinstance(r, ServerBusyError) for r in results)


# ------------------------------------------------------------------- one model everywhere
def _reads(client: ReplicaClient, models: Dict[str, object]) -> None:
    """Each url's model read: ``(meta, config)``, or an exception to raise."""
    def answer(index: int):
        def read(remaining):
            model = models[client._serving_url()]
            if isinstance(model, BaseException):
                raise model
            return model[index]
        return read

    client._get_metadata, client._get_config = answer(0), answer(1)


def test_the_model_is_read_from_the_first_replica_that_answers_and_others_checked():
    client = offline_replicas(Replicas(), checked=False)
    _reads(client, {A: ConnectionRefusedError(111, "refused"), B: (META, CONFIG),
                    C: (META, {**CONFIG, "max_batch_size": 4})})
    with pytest.raises(ClientError, match=r"the Triton server at 127.0.0.1:3 serves another "
                                          r"model 'pipeline' than 127.0.0.1:2 "
                                          r"\(max_batch_size: 8 != 4"):
        client._load_model()
    assert client._reference[0] == B and client.max_batch_size == 8
    assert client._inputs == META["inputs"] and client._outputs == ["image_output"]


def test_a_replica_down_at_start_is_checked_before_its_first_request():
    client = offline_replicas(Replicas(), checked=False)
    models = {A: ConnectionRefusedError(111, "refused"), B: (META, CONFIG), C: (META, CONFIG)}
    _reads(client, models)
    client._load_model()
    assert [r.checked for r in client._pool] == [False, True, True]
    models[A] = (_meta(datatype="FP32"), CONFIG)  # back, with another version
    time.sleep(0.05)
    with pytest.raises(ClientError, match="127.0.0.1:1 serves another model.*outputs"):
        client.infer(_items(6), mode="async_infer", concurrency=3)


def test_a_replica_without_the_model_is_a_clear_client_error():
    client = offline_replicas(Replicas(), checked=False)
    _reads(client, {A: (META, CONFIG), B: _grpc("NOT_FOUND", "Request for unknown model: "
                                                "'pipeline' is not found"), C: (META, CONFIG)})
    with pytest.raises(ClientError, match=r"cannot read model 'pipeline' from the Triton server "
                                          r"at 127.0.0.1:2 \(grpc\): Request for unknown"):
        client._load_model()


def test_threads_keep_their_own_connection_to_each_replica():
    client = offline_replicas(Replicas())
    opened: List[Tuple[str, str]] = []

    class Module:
        class InferenceServerClient:
            def __init__(self, url, **options):
                opened.append((threading.current_thread().name, url))

            def close(self):
                pass

    client._module = lambda: Module
    for replica in client._pool:
        client._local.replica = replica
        first = client._client()
        assert client._client() is first
    client._local.replica = None
    assert opened == [("MainThread", url) for url in URLS] and len(client._clients) == 3
    client.close()
    assert client._clients == {}
