"""Several replicas behind one client, without a server: how urls are read, which replica gets a
request (least in flight, ties in turn), taking a replica out and back, failover of requests to
an unreachable replica, busy replicas passed over, one error when all are down, a replica that
serves another model refused, and connections kept per thread and replica.

The client is a real :class:`~towhee_rt.Client` whose transport answers from a script
(:func:`tests.client_helpers.offline_client`), per url, with the error texts tritonclient gives
(see test_client_retry.py).
"""
from __future__ import annotations

import threading
import time
from typing import Dict, List, Optional, Tuple

import pytest

from towhee_rt.client import Client
from towhee_rt.client.endpoints import EndpointSet, parse_urls
from towhee_rt.client.failures import BUSY, OTHER, UNAVAILABLE
from towhee_rt.client.inputs import ServedInput
from towhee_rt.client.model import ModelReference, model_signature, signature_changes
from towhee_rt.client.retry import RetryPolicy
from towhee_rt.client.transport import ConnectionPool
from towhee_rt.errors import ClientError, ConfigError, ServerBusyError, ServerUnavailableError

from ..client_helpers import OFFLINE_URLS, offline_client
from .test_client_retry import QUEUE_FULL, REFUSED_GRPC, _grpc

IMAGE = ServedInput("image")
FAST = {"retries": 3, "backoff": 0.01}
URLS = OFFLINE_URLS
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


def test_one_url_is_a_set_of_one_and_several_are_replicas_of_the_same_client():
    for one in ("a:1", ["a:1"], "grpc://a:1"):
        client = Client(one)
        assert client.urls == ("a:1",) and client.url == "a:1" and len(client.replicas) == 1
    for several in ("a:1,b:2", ["a:1", "b:2"], ("a:1", "b:2")):
        client = Client(several)
        assert type(client) is Client and client.urls == ("a:1", "b:2")
        assert client.url == "a:1,b:2" and [s.url for s in client.replicas] == ["a:1", "b:2"]


# ------------------------------------------------------------------------- choice policy
class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _set(retry: RetryPolicy = RetryPolicy(backoff=1.0, max_backoff=4.0)) -> Tuple[EndpointSet,
                                                                                   Clock]:
    """Three endpoints whose backoffs are 1, 2, 4 s (the top of the jitter)."""
    clock = Clock()
    return EndpointSet(URLS, lambda k: retry.delay(k, draw=lambda: 0.999999), clock=clock), clock


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
    # forced (a request's first send, or after its wait): the one back soonest
    assert pool.acquire(force=True).url == A



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


def test_the_signature_is_inputs_outputs_batch_size_input_kind_and_fingerprint():
    reference = model_signature(META, CONFIG)
    assert reference == {"inputs": [("image", "BYTES", ("-1", "1"))],
                         "outputs": [("image_output", "UINT8", ("-1", "-1", "-1", "3"))],
                         "max_batch_size": 8, "input kind": "image", "fingerprint": None}
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
    """The offline client's answers: what each url does with a request (``None``: answers
    each payload's length; an exception: raised; a callable: called, then answered)."""

    def __init__(self, behaviour: Optional[Dict[str, object]] = None):
        self.behaviour = dict(behaviour or {})

    def __call__(self, url, payloads, timeout=None):
        action = self.behaviour.get(url)
        if isinstance(action, BaseException):
            raise action
        if callable(action):
            action()
        return [len(p) for p in payloads]


def offline_replicas(send: Replicas, urls=URLS, models: Optional[Dict[str, object]] = None,
                     **retry) -> Client:
    """An offline client of ``urls`` whose requests go to ``send`` and whose model reads
    answer ``META``, ``CONFIG`` unless ``models`` (url -> ``(meta, config)`` or an exception)
    says otherwise."""
    models = {**{url: (META, CONFIG) for url in urls}, **(models or {})}
    return offline_client(IMAGE, urls=urls, answer=send, models=models, **{**FAST, **retry})


def _items(n: int) -> List[bytes]:
    return [b"x" * (k + 1) for k in range(n)]


def test_a_dead_replicas_requests_go_to_the_others_and_every_item_comes_back_once():
    client = offline_replicas(Replicas({B: _grpc("UNAVAILABLE", REFUSED_GRPC)}))
    items = _items(40)
    arrived = list(client.stream(items, concurrency=4))
    assert sorted(i for i, _ in arrived) == list(range(40))  # each index once
    assert dict(arrived) == {i: len(x) for i, x in enumerate(items)}
    assert client.infer(items, mode="async_infer", concurrency=4) == [len(x) for x in items]
    stats = {s.url: s for s in client.replicas}
    assert not stats[B].up and stats[B].downs >= 1 and "Connection refused" in stats[
        B].last_error
    sent = client._transport
    answered = {url: sent.count(url) for url in URLS}
    assert answered[A] + answered[C] == 80 and min(answered[A], answered[C]) >= 20
    # tried, taken out, tried again (one trial at a time) only after each backoff
    assert 1 <= answered[B] <= stats[B].downs + 1 and answered[B] < 16


def test_requests_are_spread_over_replicas_under_concurrency():
    client = offline_replicas(Replicas({url: (lambda: time.sleep(0.005)) for url in URLS}))
    assert client.infer(_items(60), concurrency=3) == list(range(1, 61))
    shares = [client._transport.count(url) / 60 for url in URLS]
    assert min(shares) >= 0.2, shares


def test_a_replica_back_after_its_backoff_is_used_again():
    down = {"on": True}

    def flaky():
        if down["on"]:
            raise ConnectionRefusedError(111, "refused")

    client = offline_replicas(Replicas({B: flaky}))
    assert client.infer(_items(6)) == list(range(1, 7))
    assert not {s.url: s for s in client.replicas}[B].up
    down["on"] = False
    time.sleep(0.05)  # past FAST's first backoff (<= 10 ms)
    before = client._transport.count(B)
    assert client.infer(_items(6), concurrency=1) == list(range(1, 7))
    assert client._transport.count(B) - before >= 2 and all(s.up for s in client.replicas)


def test_records_name_the_replica_that_served_each_request():
    records = []
    client = offline_replicas(Replicas({A: ConnectionResetError(104, "reset")}),
                              on_request=records.append)
    assert len(client.infer(_items(3), concurrency=1)) == 3
    # The model read took A's turn (and answered); the request A failed went on to B at once.
    assert [(r.url, r.error is None) for r in records] == [(B, True), (C, True), (A, False),
                                                          (B, True)]
    assert isinstance(records[2].error, ConnectionResetError)


def test_every_replica_down_is_one_error_naming_every_url():
    refused = _grpc("UNAVAILABLE", REFUSED_GRPC)
    client = offline_replicas(Replicas({url: refused for url in URLS}))
    start = time.monotonic()
    with pytest.raises(ServerUnavailableError) as caught:
        client.infer(_items(5), mode="async_infer", concurrency=2)
    error = caught.value
    assert error.urls == URLS and error.url == ",".join(URLS)
    assert f"none of the 3 Triton servers {', '.join(URLS)} (grpc) is unavailable" in str(error)
    assert "each url is a grpc endpoint" in str(error) and "Connection refused" in str(error)
    assert time.monotonic() - start < 2
    # every url tried; each request at most (retries + 1) x 3 sends, waits included
    sent = client._transport
    assert all(sent.count(url) >= 1 for url in URLS)
    assert 1 <= error.attempts <= (FAST["retries"] + 1) * 3
    assert len(sent.requests) <= 5 * (FAST["retries"] + 1) * 3  # 5 requests of one item
    assert all(not s.up for s in client.replicas)


def test_a_busy_replica_is_passed_over_at_once_for_its_one_retry():
    client = offline_replicas(Replicas({A: _grpc("UNAVAILABLE", QUEUE_FULL)}), urls=(A, B),
                              retries=3, backoff=5.0)
    start = time.monotonic()
    assert client.infer(_items(4)) == [1, 2, 3, 4]
    assert time.monotonic() - start < 1  # no 2.5-5 s pause: another replica was up
    assert all(s.up for s in client.replicas)
    # alone, a busy replica gets the one retry and then fails its items as busy
    lone = offline_replicas(Replicas({A: _grpc("UNAVAILABLE", QUEUE_FULL),
                                      B: ConnectionRefusedError(111, "refused")}), urls=(A, B))
    results = lone.infer(_items(2), errors="return")
    assert all(isinstance(r, ServerBusyError) for r in results)


# ------------------------------------------------------------------- one model everywhere
def test_the_model_is_read_from_the_first_replica_that_answers_and_others_checked():
    client = offline_replicas(Replicas(), models={
        A: ConnectionRefusedError(111, "refused"), C: (META, {**CONFIG, "max_batch_size": 4})})
    assert client.max_batch_size == 8  # B's: A did not answer
    model = client._reference.model
    assert model.inputs == tuple(META["inputs"]) and model.outputs == ("image_output",)
    with pytest.raises(ClientError, match=r"the Triton server at 127.0.0.1:3 serves another "
                                          r"model 'pipeline' than 127.0.0.1:2 "
                                          r"\(max_batch_size: 8 != 4"):
        client.infer(_items(4))


def test_a_replica_down_at_start_is_checked_before_its_first_request():
    models = {A: ConnectionRefusedError(111, "refused")}
    client = offline_replicas(Replicas(), models=models)
    assert client.served.kind == "image"  # read from B
    assert [e.checked for e in client._endpoints] == [False, True, False]
    client._transport.reads = {A: (_meta(datatype="FP32"), CONFIG), B: (META, CONFIG),
                               C: (META, CONFIG)}.get  # A back, with another version
    time.sleep(0.05)
    with pytest.raises(ClientError, match="127.0.0.1:1 serves another model.*outputs"):
        client.infer(_items(6), mode="async_infer", concurrency=3)


def test_a_replica_without_the_model_is_a_clear_client_error():
    client = offline_replicas(Replicas(), models={
        B: _grpc("NOT_FOUND", "Request for unknown model: 'pipeline' is not found")})
    with pytest.raises(ClientError, match=r"cannot read model 'pipeline' from the Triton server "
                                          r"at 127.0.0.1:2 \(grpc\): Request for unknown.*"
                                          r"every url of one client must serve this model"):
        client.infer(_items(3))


def test_the_reference_model_is_the_first_accepted_and_others_must_match():
    reference = ModelReference("pipeline")
    assert reference.model is None
    first = reference.accept(B, META, CONFIG)
    assert reference.accept(A, {**META, "versions": ["2"]}, CONFIG) is first
    with pytest.raises(ClientError, match=r"127.0.0.1:3 serves another model 'pipeline' than "
                                          r"127.0.0.1:2 \(input kind: 'image' != 'text'"):
        reference.accept(C, META, {**CONFIG, "parameters": {
            "towhee_input_kind": {"string_value": "text"}}})
    assert reference.model is first and first.max_batch_size == 8


def _fingerprinted(fingerprint: str) -> dict:
    return {**CONFIG, "parameters": {**CONFIG["parameters"],
                                     "towhee_fingerprint": {"string_value": fingerprint}}}


def test_the_client_reads_the_fingerprint_and_refuses_replicas_serving_another():
    same, other = _fingerprinted("aaaa000011112222"), _fingerprinted("bbbb000011112222")
    client = offline_replicas(Replicas(), models={A: (META, same), B: (META, same),
                                                  C: (META, other)})
    assert client.fingerprint == "aaaa000011112222"  # read with the model, from A
    with pytest.raises(ClientError, match=r"127.0.0.1:3 serves another model 'pipeline' than "
                                          r"127.0.0.1:1 \(fingerprint: 'aaaa000011112222' != "
                                          r"'bbbb000011112222'"):
        client.infer(_items(6), concurrency=1)
    # a repository built before fingerprints says nothing: None, and differs from one that says
    old = offline_replicas(Replicas(), urls=(A,))
    assert old.fingerprint is None
    reference = ModelReference("pipeline")
    reference.accept(A, META, CONFIG)
    with pytest.raises(ClientError, match=r"fingerprint: None != 'aaaa000011112222'"):
        reference.accept(B, META, _fingerprinted("aaaa000011112222"))


# ------------------------------------------------------------------------------ connections
def test_threads_keep_their_own_connection_to_each_replica():
    opened: List[Tuple[str, str]] = []

    class Connection:
        def __init__(self, url):
            self.closed = False
            opened.append((threading.current_thread().name, url))

        def close(self):
            self.closed = True

    pool = ConnectionPool(Connection)
    firsts = [pool.get(url) for url in URLS]
    assert [pool.get(url) for url in URLS] == firsts  # the same ones again
    worker = threading.Thread(target=lambda: pool.get(A), name="worker")
    worker.start()
    worker.join()
    assert opened == [("MainThread", url) for url in URLS] + [("worker", A)]
    assert len(pool) == 4
    pool.close_finished_threads()  # the worker ended: its connection is closed
    assert len(pool) == 3
    pool.drop(B)
    assert firsts[1].closed and len(pool) == 2 and pool.get(B) is not firsts[1]
    pool.close()
    assert len(pool) == 0 and all(c.closed for c in firsts)
