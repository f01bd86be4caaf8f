"""Servers: towhee_rt on the embedded tritonserver (ONNX format) and the PyTriton peer.

Each server is queried by ``towhee_rt.Client`` over gRPC, ``mode='async_infer'``, 8 requests in
flight, one item per request.
"""
from __future__ import annotations

import pytest

from .common import PIPELINES, items_for, onnx_model_file
from .conftest import ITEMS, ROUNDS, record_rate
from .served import LOW_LATENCY, ONE_INSTANCE, RECOMMENDED, served

CONCURRENCY = 8
SETTINGS = {"defaults": RECOMMENDED, "one_instance": ONE_INSTANCE, "low_latency": LOW_LATENCY}


@pytest.fixture(scope="module", params=[(p, s) for p in PIPELINES for s in SETTINGS],
                ids=lambda ps: f"{ps[0]}-{ps[1]}")
def towhee_rt_server(request):
    pipeline, setting = request.param
    with served(pipeline, SETTINGS[setting]) as (server, client, info):
        yield pipeline, client


# The peer has no EfficientNet preprocessing: no lite0 peer.
@pytest.fixture(scope="module", params=[p for p in PIPELINES if p != "lite0"])
def pytriton_peer(request, onnx_pipes):
    from towhee_rt.client import Client

    from .peer_pytriton import start_peer

    pipeline = request.param
    with start_peer(pipeline, onnx_model_file(onnx_pipes(pipeline))) as peer:
        client = Client(peer["grpc_url"], model_name="pipeline")
        try:
            yield pipeline, client
        finally:
            client.close()


def _bench_client(benchmark, pipeline, client):
    items = items_for(pipeline, ITEMS)
    client.infer(items[:2 * CONCURRENCY], mode="async_infer", concurrency=CONCURRENCY)
    results = benchmark.pedantic(client.infer, args=(items,),
                                 kwargs={"mode": "async_infer", "concurrency": CONCURRENCY},
                                 rounds=ROUNDS, iterations=1)
    assert len(results) == len(items)
    record_rate(benchmark, len(items))


def test_towhee_rt_served(benchmark, towhee_rt_server):
    pipeline, client = towhee_rt_server
    _bench_client(benchmark, pipeline, client)


def test_pytriton_peer(benchmark, pytriton_peer):
    pipeline, client = pytriton_peer
    _bench_client(benchmark, pipeline, client)
