"""How a call's items become requests, and each item's result or error.

Items are cut into batches (:func:`batches_of`); the batches run ``concurrency`` at a time
(:func:`run_concurrently`). Within a batch (:class:`BatchSender`), items that cannot be sent
(unreadable, over a byte limit) fail alone, the rest go in requests under the server's
``max_request_bytes``; a request whose items failed on the server gives those items their
errors and sends the others again without them, and a request the server was too busy for, or
that ran out of time, fails each of its items alike.
"""
from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

from ..backends.operator_base import OperatorInputError
from ..backends.wire import ItemFailure, decode_failures
from ..errors import ItemError
from .failures import BUSY, TIMEOUT, rejection_error
from .inputs import payload_bytes, split_by_bytes
from .retry import GaveUp

__all__ = ["BatchSender", "batches_of", "run_concurrently"]

#: (index of the item in the call, its result or ItemError)
Pair = Tuple[int, Any]


def batches_of(count: int, size: int) -> List[List[int]]:
    """The indices ``0 .. count - 1`` in consecutive batches of ``size``."""
    return [list(range(k, min(k + size, count))) for k in range(0, count, size)]


def run_concurrently(run: Callable[[List[int]], List[Pair]], batches: List[List[int]],
                     concurrency: int, stop: threading.Event) -> Iterator[Pair]:
    """Yield the pairs of ``run(batch)`` for every batch as they arrive, ``concurrency``
    batches at once (in this thread when one at a time). The first exception sets ``stop``
    (requests under way stop retrying), cancels the batches not started and is raised.

    ``concurrency`` worker threads each take the next batch not started until none is left,
    and hand their pairs over one queue: no future, lock and waiter per batch (with one item
    per request, those cost about as much CPU as the client's own work on the request).
    """
    if concurrency == 1 or len(batches) <= 1:
        for batch in batches:
            yield from run(batch)
        return
    workers = min(concurrency, len(batches))
    pending = iter(batches)
    taking = threading.Lock()
    done: "queue.SimpleQueue[Tuple[bool, Any]]" = queue.SimpleQueue()

    def work() -> None:
        try:
            while not stop.is_set():  # set on the first failure: no other batch starts
                with taking:
                    batch = next(pending, None)
                if batch is None:
                    break
                done.put((True, run(batch)))
        except BaseException as exc:  # noqa: BLE001 - raised in the caller's thread
            done.put((False, exc))
        finally:
            done.put((True, None))  # this worker has ended

    with ThreadPoolExecutor(workers, thread_name_prefix="towhee_rt-client") as pool:
        for _ in range(workers):
            pool.submit(work)
        try:
            running = workers
            while running:
                ok, value = done.get()
                if not ok:
                    raise value
                if value is None:
                    running -= 1
                else:
                    yield from value
        except BaseException:  # e.g. a refused key: do not send the other batches
            stop.set()
            pool.shutdown(wait=True)
            raise


class BatchSender:
    """Sends batches of ``items``: ``encode(item)`` is what is sent for one (raises
    ``OperatorInputError`` for an item that cannot be sent), ``send(payloads)`` one request's
    results (raises :class:`~towhee_rt.client.retry.GaveUp` for a request that failed),
    ``source(index)`` how an item is named in its error; ``timeout`` is quoted in the error of
    a request that ran out of time."""

    def __init__(self, items: Sequence[Any], encode: Callable[[Any], Any],
                 send: Callable[[List[Any]], List[Any]], max_request_bytes: Optional[int],
                 timeout: float, source: Callable[[int], Optional[str]]):
        self._items, self._encode, self._send = items, encode, send
        self._max_request_bytes, self._timeout, self._source = max_request_bytes, timeout, source

    def run(self, batch: List[int]) -> List[Pair]:
        """Each index of ``batch`` with its result or :class:`ItemError`."""
        out: List[Pair] = []
        ready: List[Tuple[int, Any]] = []  # (index, payload)
        for i in batch:
            try:
                ready.append((i, self._encode(self._items[i])))
            except OperatorInputError as exc:
                failure = ItemFailure.from_exception(None, i, exc)
                out.append((i, ItemError.from_failure(failure, i, self._source(i))))
        sizes = [payload_bytes(payload) for _, payload in ready]
        for group in split_by_bytes(sizes, self._max_request_bytes):
            out += self._send_group([ready[k][0] for k in group], [ready[k][1] for k in group])
        return out

    def _send_group(self, indices: List[int], payloads: List[Any]) -> List[Pair]:
        """Send ``payloads`` in one request; on item failures, send the rest again."""
        try:
            return list(zip(indices, self._send(payloads)))
        except GaveUp as failure:
            if failure.kind in (BUSY, TIMEOUT):
                return [(i, self._rejected(failure, i)) for i in indices]
            return self._after_item_failures(indices, payloads, failure.text)

    def _rejected(self, failure: GaveUp, index: int) -> ItemError:
        return rejection_error(failure.kind, failure.text, failure.attempts, self._timeout,
                               index, self._source(index))

    def _after_item_failures(self, indices: List[int], payloads: List[Any],
                             text: str) -> List[Pair]:
        """The failed items' errors (as the server named them in ``text``), and the others
        sent again; when no item is named, each item is sent alone."""
        named = {f.index: f for f in decode_failures(text) if 0 <= f.index < len(indices)}
        if not named:  # transport, or a request-level error
            if len(indices) == 1:
                return [(indices[0], ItemError(indices[0], None, text))]
            return [pair for k in range(len(indices))
                    for pair in self._send_group([indices[k]], [payloads[k]])]
        out = [(indices[k], ItemError.from_failure(f, indices[k], self._source(indices[k])))
               for k, f in named.items()]
        rest = [k for k in range(len(indices)) if k not in named]
        if rest:
            out += self._send_group([indices[k] for k in rest], [payloads[k] for k in rest])
        return out
