"""A :class:`~towhee_rt.client.Client` over several replicas of one served pipeline.

Example::

    from towhee_rt import Client
    urls = ["10.0.0.1:8001", "10.0.0.2:8001", "10.0.0.3:8001"]  # or "10.0.0.1:8001,10.0.0.2:8001"
    with Client(urls) as client:  # a ReplicaClient
        vectors = client.infer(items, mode="async_infer", concurrency=8)
        print(client.replicas)    # per replica: up, requests, failures, times taken out

**Spreading.** Each request goes to the replica with the fewest requests in flight, ties in
turn (:class:`~towhee_rt.client_replicas.ReplicaSet`); every sending thread keeps its own
connection to each replica. ``on_request`` records name the replica that served each request
(``RequestRecord.url``).

**Failover.** A request whose replica cannot be reached (refused, reset or closed connection,
model being reloaded: :data:`~towhee_rt.client_retry.UNAVAILABLE`) is sent again at once to
another replica, and the unreachable one is taken out for a backoff (the ``backoff`` delays,
doubling up to ``max_backoff``), then tried again with the next request (no probe traffic).
Results are placed by item index, each once: no item is lost or duplicated. A request whose
answer was lost (its server died while computing it) may have run twice server-side, which is
harmless for embeddings (the same input gives the same vector). Only when every replica is down
and none comes back within ``retries`` waits (and the request's ``timeout``) does the call raise
one :class:`~towhee_rt.errors.ServerUnavailableError`, naming every url.

**Busy and slow replicas.** A request a replica turns away as busy (full queue, queue timeout)
is sent at once to another replica that is up, within the one retry a busy answer gets (a lone
replica gets it after a pause, as with one url); then its items fail as
:class:`~towhee_rt.errors.ServerBusyError`. A request not answered within ``timeout`` is not sent
again (its time is spent) and does not take its replica out: slow is not down.

**One model everywhere.** The model's metadata and config come from the first replica that
answers; every other replica is read when the client starts, or, if unreachable then, before
its first request (and again each time it comes back). One that serves a different model
(inputs, outputs, ``max_batch_size`` or input kind) is refused with a
:class:`~towhee_rt.errors.ClientError` for the call: mixed versions behind one client are a
roll-out accident, not something to average over.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, Dict, Optional, Tuple

from .client import Client
from .client_replicas import (Replica, ReplicaSet, ReplicaStats, model_signature, parse_urls,
                              signature_changes)
from .client_retry import BUSY, OTHER, UNAVAILABLE, Cancelled, classify_error, error_text
from .errors import ClientError, ServerUnavailableError, TowheeRTError

__all__ = ["ReplicaClient"]


class _Failed(Exception):
    """One attempt failed as ``kind`` (:func:`classify_error`) with ``text``."""

    def __init__(self, kind: str, text: str):
        super().__init__(text)
        self.kind, self.text = kind, text


class ReplicaClient(Client):
    """:class:`~towhee_rt.client.Client` of several replicas of one served pipeline (what
    ``Client(url=[...])`` gives; see the module docstring). ``url`` is then the addresses
    joined by commas, :attr:`urls` each one; every other argument as for one server, with
    ``retries``: how many times a call waits for a replica to come back when all are down."""

    def __init__(self, url: Any, *args: Any, **kwargs: Any):
        #: Every replica's ``"host:port"``, in the order given.
        self.urls = tuple(parse_urls(url))
        super().__init__(url, *args, **kwargs)

    @property
    def replicas(self) -> Tuple[ReplicaStats, ...]:
        """Each replica's state and counts now (requests include the model reads)."""
        return self._pool.stats()

    def ready(self) -> bool:
        """Whether at least one replica and its model are ready."""
        for replica in self._pool:
            self._local.replica = replica
            try:
                if super().ready():
                    return True
            except Exception:  # noqa: BLE001 - an unreachable replica is not ready
                continue
            finally:
                self._local.replica = None
        return False

    # -- internals ----------------------------------------------------------------------------
    def _serving_url(self) -> str:
        replica = getattr(self._local, "replica", None)
        return replica.url if replica is not None else self.urls[0]

    def _start_replicas(self) -> None:
        """The replica set, every replica up and not read yet."""
        self._pool = ReplicaSet(self.urls, self.retry)
        self._local = threading.local()
        self._reference: Optional[Tuple[str, Dict[str, Any]]] = None  # (url, signature)

    def _load_model(self) -> None:
        """Read the model from the first replica that answers, and check every other replica
        that answers now."""
        self._start_replicas()
        self._read(lambda remaining: None, f"read model {self.model_name!r}")
        for replica in self._pool:
            if replica.checked or replica.down_until is not None:
                continue
            self._local.replica = replica
            try:
                self._check(replica, self.timeout)
            except TowheeRTError:
                raise
            except Exception:  # noqa: BLE001 - unreachable now: checked before its first use
                pass
            finally:
                self._local.replica = None

    def _check(self, replica: Replica, remaining: float) -> None:
        """Read ``replica``'s model (this thread's connection to it); the first one read is the
        reference, any other must match it. Raises tritonclient's error when unreachable."""
        try:
            meta, config = self._get_metadata(remaining), self._get_config(remaining)
        except Exception as exc:  # noqa: BLE001 - transport errors go back to _call
            if classify_error(exc) != OTHER:
                raise
            raise ClientError(
                f"cannot read model {self.model_name!r} from the Triton server at {replica.url} "
                f"({self.protocol}): {error_text(exc)}. Every url of one client must serve this "
                "model: check model_name= and the models that server serves (towhee-rt serve "
                "prints them)") from None
        signature = model_signature(meta, config)
        with self._lock:
            if self._reference is None:
                self._reference = (replica.url, signature)
                self._use_model(meta, config)
            first, reference = self._reference
        changes = signature_changes(reference, signature)
        if changes:
            raise ClientError(
                f"the Triton server at {replica.url} serves another model {self.model_name!r} "
                f"than {first} ({'; '.join(changes)}, {first} first). Replicas behind one client "
                "must serve the same pipeline: finish the roll-out, or give this client only the "
                "urls of one version")
        replica.checked = True

    def _call(self, call: Callable[[float], Any], deadline: float,
              stop: Optional[threading.Event] = None, doing: str = "send requests") -> Any:
        """``call(remaining_seconds)`` on the replica the set picks. Unreachable: the replica
        is taken out and the call sent at once to another; with every replica down, the call
        waits for the first to come back (``retries`` times at most, within ``deadline``).
        Busy: sent to another replica within the busy retry. Failures are raised as
        :meth:`Client._call` raises them."""
        stop = stop or threading.Event()
        start = time.monotonic()
        attempts = waits = busy_retried = 0
        avoid, text = None, "no replica could be tried"
        most = (self.retry.retries + 1) * len(self.urls)  # bounds a flapping set of replicas
        while True:
            if stop.is_set():
                raise Cancelled()
            replica, avoid = self._pool.acquire(avoid), None
            if replica is None:
                delay = self._pool.wait_s()
                if waits >= self.retry.retries or time.monotonic() + delay >= deadline:
                    raise self._unavailable(text, attempts, time.monotonic() - start, doing)
                waits += 1
                if stop.wait(delay):
                    raise Cancelled()
                continue
            attempts += 1
            try:
                return self._attempt(replica, call, deadline)
            except _Failed as failed:
                kind, text = failed.kind, failed.text
            now = time.monotonic()
            if kind == UNAVAILABLE:
                if attempts < most:
                    continue
                raise self._unavailable(text, attempts, now - start, doing)
            if kind == BUSY and self.retry.should_retry(BUSY, attempts - 1, busy_retried):
                busy_retried += 1
                avoid = replica.url
                delay = 0.0 if self._pool.usable_besides(replica.url) else self.retry.delay(0)
                if now + delay < deadline:
                    if stop.wait(delay):
                        raise Cancelled()
                    continue
            raise self._failure(kind, text, attempts, now - start, doing)

    def _attempt(self, replica: Replica, call: Callable[[float], Any], deadline: float) -> Any:
        """One try of ``call`` on ``replica`` (its model checked first when not yet);
        raises :class:`_Failed` with what a tritonclient error means."""
        kind: Optional[str] = OTHER
        text = ""
        self._local.replica = replica
        try:
            if not replica.checked:
                self._check(replica, deadline - time.monotonic())
            result = call(deadline - time.monotonic())
            kind = None
            return result
        except TowheeRTError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified, then re-sent or raised
            kind, text = self._classify(exc, deadline)
            raise _Failed(kind, text) from None
        finally:
            self._local.replica = None
            self._pool.release(replica, kind, text)

    def _unavailable(self, text: str, attempts: int, seconds: float,
                     doing: str) -> ServerUnavailableError:
        return ServerUnavailableError(self.url, self.protocol, text, attempts, seconds, doing,
                                      urls=self.urls)
