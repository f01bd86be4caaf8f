"""run_concurrently: every batch's pairs, ``concurrency`` at once, and the first failure stops
the batches not started."""
import threading
import time

import pytest

from towhee_rt.client.batches import batches_of, run_concurrently


def _pairs(batch):
    return [(i, i * 10) for i in batch]


@pytest.mark.parametrize("concurrency", [1, 3, 8])
def test_every_pair_arrives_once(concurrency):
    stop = threading.Event()
    out = list(run_concurrently(_pairs, batches_of(50, 2), concurrency, stop))
    assert sorted(out) == [(i, i * 10) for i in range(50)]
    assert not stop.is_set()


def test_at_most_concurrency_batches_run_at_once_in_named_threads():
    lock, now, most, names = threading.Lock(), [0], [0], set()

    def run(batch):
        with lock:
            now[0] += 1
            most[0] = max(most[0], now[0])
            names.add(threading.current_thread().name)
        time.sleep(0.002)
        with lock:
            now[0] -= 1
        return _pairs(batch)

    out = list(run_concurrently(run, batches_of(40, 1), 4, threading.Event()))
    assert len(out) == 40 and most[0] <= 4
    assert all(name.startswith("towhee_rt-client") for name in names)


def test_the_first_failure_is_raised_sets_stop_and_no_other_batch_starts():
    started = []

    def run(batch):
        started.append(batch[0])
        if batch[0] == 3:
            raise RuntimeError("refused")
        time.sleep(0.001)
        return _pairs(batch)

    stop = threading.Event()
    with pytest.raises(RuntimeError, match="refused"):
        list(run_concurrently(run, batches_of(200, 1), 2, stop))
    assert stop.is_set()
    assert len(started) < 20  # the rest were never started


def test_closing_the_stream_early_stops_the_other_batches():
    started = []

    def run(batch):
        started.append(batch[0])
        time.sleep(0.001)
        return _pairs(batch)

    stop = threading.Event()
    stream = run_concurrently(run, batches_of(200, 1), 4, stop)
    next(stream)
    stream.close()
    assert stop.is_set()
    count = len(started)
    time.sleep(0.02)
    assert len(started) == count < 20
