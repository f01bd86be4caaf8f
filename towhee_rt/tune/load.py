"""Steady load for the tuner: ``concurrency`` threads each send one item per request, back to
back, so that exactly that many requests are in flight the whole time; a window counts the
answers that arrive within it (as Triton's perf_analyzer does). Windows cut from a steady
stream carry no ramp-up or drain at their edges, which batches of requests sent per window
would.
"""
from __future__ import annotations

import threading
import time
from typing import Any, List, Sequence, Tuple

from .window import Window

#: Seconds a stopping thread may take to finish its request (the client's own timeout bounds it).
JOIN_TIMEOUT_S = 90.0


class SteadyLoad:
    """Keep ``concurrency`` requests of ``items`` (sent round and round) in flight through a
    :class:`towhee_rt.Client` until :meth:`stop`; use as a context manager."""

    def __init__(self, url: str, model: str, items: Sequence[Any], concurrency: int):
        from ..client import Client

        self.items = list(items)
        self.concurrency = concurrency
        self._client = Client(url, model_name=model, protocol="grpc", on_request=self._record)
        self._client.served  # an unknown model or a down server fails here, not in a worker
        self._done: List[Tuple[float, float, bool]] = []  # (answered at, seconds, failed)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._send, args=(k,), daemon=True,
                                          name=f"towhee_rt-tune-{k}")
                         for k in range(concurrency)]

    def __enter__(self) -> "SteadyLoad":
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def stop(self) -> None:
        """Let every thread finish its request, then close the connections."""
        self._stop.set()
        for thread in self._threads:
            thread.join(JOIN_TIMEOUT_S)
        self._client.close()

    def _record(self, record) -> None:
        with self._lock:
            self._done.append((time.monotonic(), record.seconds, record.error is not None))

    def _send(self, offset: int) -> None:
        k = offset
        while not self._stop.is_set():
            try:
                self._client.infer([self.items[k % len(self.items)]], errors="return")
            except Exception:  # noqa: BLE001 - the window counts no answer; do not spin
                time.sleep(0.1)
            k += self.concurrency

    def window(self, seconds: float) -> Window:
        """Wait ``seconds`` and count what was answered meanwhile."""
        started = time.monotonic()
        self._stop.wait(seconds)
        ended = time.monotonic()
        with self._lock:
            inside = [d for d in self._done if started <= d[0] < ended]
            self._done = [d for d in self._done if d[0] >= ended]  # bounded: older ones go
        latencies = [d[1] for d in inside if not d[2]]
        return Window(len(latencies), ended - started, latencies,
                      errors=len(inside) - len(latencies))
