"""Three replicas of one pipeline behind one multi-url client: real tritonservers on free loopback
ports serving the same repository (``image_decode.cv2_rgb``, the cheapest real towhee_rt
pipeline), always stopped.

* one replica SIGKILLed mid-run: every result is still there, once, in order, equal to the local
  pipeline's output for that item, and the load was spread (each replica that stayed alive
  served a share, see MIN_SHARE; the killed one some before it died);
* a replica down from the start is skipped (gRPC and HTTP);
* every replica down is one ServerUnavailableError naming every url.
"""
from __future__ import annotations

import collections
import time
from pathlib import Path
from typing import Dict, List

import numpy as np
import pytest

import towhee_rt as towhee
from towhee_rt.client import RequestRecord
from towhee_rt.errors import ServerUnavailableError
from towhee_rt.triton.ports import find_free_port
from towhee_rt.triton.server import TritonServer

from ..conftest import GOOD_SHAPES

pytestmark = pytest.mark.integration

ITEMS = 300
CONCURRENCY = 6
KILL_AFTER = 100  # results arrived when one replica is killed
#: Least in flight follows each server's speed, and on this shared 2-core machine one of them
#: now and then stops answering for ~0.5 s with several requests in flight (measured with plain
#: tritonclient against one server too, so not this client): survivors served 11 to 68 % of the
#: items over 7 runs. 5 % still fails a client that leaves a live replica out.
MIN_SHARE = 0.05


@pytest.fixture(scope="module")
def images(good_dir) -> List[str]:
    """The good images up to 640 x 640 pixels (the 1920 x 1280 one would only slow the run)."""
    return [str(good_dir / name) for name, shape in sorted(GOOD_SHAPES.items())
            if max(shape) <= 640]


@pytest.fixture(scope="module")
def pipeline():
    return towhee.dummy_input().image_decode.cv2_rgb().as_function()


@pytest.fixture(scope="module")
def local(pipeline, images) -> Dict[str, np.ndarray]:
    """Each image's output of the local pipeline: the reference."""
    return dict(zip(images, pipeline(images)))


@pytest.fixture(scope="module")
def servers(pipeline, tmp_path_factory):
    """Three tritonservers of the same repository, on distinct free ports."""
    repo = towhee.build_model_repo(pipeline, tmp_path_factory.mktemp("replicas") / "repo").path
    ports: List[int] = []
    while len(set(ports)) < 9:  # picked before any server binds, so no two share one
        ports = [find_free_port() for _ in range(9)]
    started = [TritonServer(repo, grpc_port=ports[k], http_port=ports[k + 1],
                            metrics_port=ports[k + 2]) for k in (0, 3, 6)]
    try:
        for server in started:
            server.start()
        for server in started:
            server.wait_ready()
        yield started
    finally:
        for server in started:
            server.stop()


def _dead_urls(count: int) -> List[str]:
    """Loopback addresses nothing listens on."""
    ports: List[int] = []
    while len(set(ports)) < count:
        ports = [find_free_port() for _ in range(count)]
    return [f"127.0.0.1:{port}" for port in ports]


def _served_items(records: List[RequestRecord]) -> Dict[str, int]:
    """Items answered per replica url."""
    served: Dict[str, int] = collections.Counter()
    for record in records:
        if record.error is None:
            served[record.url] += record.items
    return served


@pytest.mark.timeout(120)
def test_a_replica_killed_mid_run_loses_no_item_and_the_load_was_spread(servers, images, local):
    items = [images[k % len(images)] for k in range(ITEMS)]
    urls = [server.grpc_url for server in servers]
    victim = servers[1]
    records: List[RequestRecord] = []
    arrived = []
    start = time.monotonic()
    with towhee.Client(urls, timeout=30, on_request=records.append) as client:
        for index, result in client.stream(items, concurrency=CONCURRENCY):
            arrived.append((index, result))
            if len(arrived) == KILL_AFTER:
                victim.kill()  # SIGKILL of its process group, requests in flight on it
                killed_at = time.monotonic() - start
        stats = {s.url: s for s in client.replicas}
    took = time.monotonic() - start
    served = _served_items(records)
    failed = collections.Counter(r.url for r in records if r.error is not None)
    print(f"\n{ITEMS} items, {CONCURRENCY} in flight over 3 replicas, one killed after "
          f"{killed_at:.2f} s, done in {took:.2f} s; items served per replica: "
          + ", ".join(f"{url} {served[url]} ({100 * served[url] / ITEMS:.0f} %)" for url in urls)
          + f"; failed requests: {dict(failed)}")

    indices = [index for index, _ in arrived]
    assert sorted(indices) == list(range(ITEMS))  # every item, each once
    results: List[np.ndarray] = [None] * ITEMS
    for index, result in arrived:
        results[index] = result
    for item, result in zip(items, results):  # in order, equal to the local pipeline's
        assert isinstance(result, np.ndarray), result
        np.testing.assert_array_equal(result, local[item])

    assert sum(served.values()) == ITEMS  # each item answered once, by one replica
    assert failed[victim.grpc_url] >= 1 and not stats[victim.grpc_url].up
    assert served[victim.grpc_url] > 0
    for url in urls:
        if url != victim.grpc_url:
            assert stats[url].up and not failed[url]
            assert served[url] >= MIN_SHARE * ITEMS, served


@pytest.mark.timeout(60)
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_a_replica_down_from_the_start_is_skipped(servers, images, local, protocol):
    alive = [servers[0], servers[2]]  # never killed
    dead, = _dead_urls(1)
    urls = [dead] + [s.grpc_url if protocol == "grpc" else s.http_url for s in alive]
    records: List[RequestRecord] = []
    items = images * 3
    with towhee.Client(urls, protocol=protocol, on_request=records.append) as client:
        results = client.infer(items, mode="async_infer", concurrency=4)
        stats = {s.url: s for s in client.replicas}
    for item, result in zip(items, results):
        np.testing.assert_array_equal(result, local[item])
    served = _served_items(records)
    assert dead not in served and not stats[dead].up and stats[dead].downs >= 1
    assert all(served[url] > 0 for url in urls[1:]), served


@pytest.mark.timeout(60)
def test_every_replica_down_is_one_unavailable_error_naming_every_url(images):
    urls = _dead_urls(2)
    start = time.monotonic()
    with pytest.raises(ServerUnavailableError) as caught:
        towhee.dc(images).remote(url=urls, retries=2, backoff=0.05)
    assert time.monotonic() - start < 5
    assert caught.value.urls == tuple(urls)
    assert (f"cannot read model 'pipeline': none of the 2 Triton servers {urls[0]}, {urls[1]} "
            "(grpc) is unavailable") in str(caught.value)
