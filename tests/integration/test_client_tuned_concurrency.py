"""The requests in flight that ``towhee-rt tune`` records in a pipeline reach the client, on a
real tritonserver (loopback, always stopped).

The repository is test_client_faults' hand-written one (``pipeline``: ``double`` then ``slow``,
which computes one request at a time, ``SLOW_S`` each), plus the same ensemble recorded as tuned
(parameter ``towhee_client_concurrency``, as the tuner writes it) at 2 (``tuned2``) and at 1
(``tuned1``). Requests in flight are counted twice: from the client's own records (spans that
overlap) and from Triton's statistics (time requests waited in ``slow``'s queue, for
``dc().remote()``, which has no records). An explicit ``concurrency`` always wins.
"""
from __future__ import annotations

import time

import numpy as np
import pytest

import towhee_rt as towhee
from towhee_rt.client.client import DEFAULT_CONCURRENCY
from towhee_rt.triton.config import read_repository, write_config
from towhee_rt.tune.space import record_concurrency

from .test_client_faults import (ENSEMBLE_CONFIG, SLOW_S, _expected, _items, _most_in_flight,
                                 _settled, _stats, write_repo)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    repo = write_repo(tmp_path_factory.mktemp("tuned_concurrency") / "repo")
    untuned = read_repository(repo)["pipeline"]
    for value in (2, 1):
        name = f"tuned{value}"
        (repo / name / "1").mkdir(parents=True)
        (repo / name / "config.pbtxt").write_text(ENSEMBLE_CONFIG.format(name=name, slow="slow"))
        ensemble = read_repository(repo)[name]
        write_config(repo, name, record_concurrency(ensemble, value))  # as the tuner does
    assert "towhee_client_concurrency" not in untuned.parameters
    with towhee.serve(repo, grpc_port=0, http_port=0, metrics_port=0) as srv:
        yield srv


def _recorder():
    """(spans, on_request): the (start, end) of every request the client reports."""
    spans = []

    def record(request):
        now = time.monotonic()
        spans.append((now - request.seconds, now))

    return spans, record


def _spans_of(client_kwargs, url, **infer_kwargs):
    """(the client's default concurrency, the most requests it had in flight) for one call of
    8 items."""
    spans, record = _recorder()
    items = _items(8)
    with towhee.Client(url, on_request=record, **client_kwargs) as client:
        results = client.infer(items, **infer_kwargs)
        default = client.concurrency
    assert all(np.array_equal(a, b) for a, b in zip(results, _expected(items)))
    assert len(spans) == len(items)
    return default, _most_in_flight(spans)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_the_client_sends_the_recorded_concurrency_unless_told_otherwise(server, protocol):
    url = server.grpc_url if protocol == "grpc" else server.http_url
    kwargs = {"model_name": "tuned2", "protocol": protocol}
    assert _spans_of(kwargs, url) == (2, 2)  # the recorded value, not the default 4
    assert _spans_of(kwargs, url, mode="async_infer") == (2, 2)
    assert _spans_of(kwargs, url, concurrency=3) == (2, 3)  # an explicit argument wins
    assert _spans_of(kwargs, url, concurrency=1) == (2, 1)
    # The same ensemble without the parameter: the client's own default.
    assert _spans_of({"model_name": "pipeline", "protocol": protocol}, url) == \
        (DEFAULT_CONCURRENCY, DEFAULT_CONCURRENCY)


@pytest.mark.timeout(120)
def test_stream_uses_the_recorded_concurrency(server):
    spans, record = _recorder()
    items = _items(6)
    with towhee.Client(server.grpc_url, model_name="tuned2", on_request=record) as client:
        got = dict(client.stream(items))
    assert sorted(got) == list(range(6)) and _most_in_flight(spans) == 2


@pytest.mark.timeout(120)
def test_remote_uses_the_recorded_concurrency_unless_told_otherwise(server):
    """``slow`` computes one request at a time: requests sent together wait in its queue,
    requests sent one after another do not."""
    items = _items(8)

    def queued_s(**kwargs) -> float:
        before = _stats(server, "slow")
        results = towhee.dc(items).remote(url=server.grpc_url, **kwargs)
        assert all(np.array_equal(a, b) for a, b in zip(results, _expected(items)))
        return _settled(server, before, target=len(items))["queue_ns"] / 1e9

    recorded_one = queued_s(model_name="tuned1")
    told_four = queued_s(model_name="tuned1", concurrency=4)
    untuned = queued_s(model_name="pipeline")
    print(f"\nremote() of 8 requests of {SLOW_S} s, queued in all: tuned1 {recorded_one:.2f} s, "
          f"tuned1 with concurrency=4 {told_four:.2f} s, untuned (4) {untuned:.2f} s")
    # 4 in flight: each request waits for ~3 others (~0.3 s); one at a time: none waits.
    assert told_four > 4 * SLOW_S > 4 * recorded_one
    assert untuned > 4 * SLOW_S


@pytest.mark.timeout(60)
def test_the_openai_gateway_keeps_the_recorded_concurrency_unless_told_otherwise(server):
    from towhee_rt.gateway.backend import PipelineBackend

    def concurrency_of(model_name, **kwargs):
        backend = PipelineBackend(server.grpc_url, model_name, input_kind="text", **kwargs)
        try:
            return backend.concurrency
        finally:
            backend.close()

    assert concurrency_of("tuned2") == 2
    assert concurrency_of("tuned2", concurrency=3) == 3
    assert concurrency_of("pipeline") == DEFAULT_CONCURRENCY
