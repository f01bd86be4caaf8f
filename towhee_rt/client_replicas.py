"""Replicas of one served pipeline behind one client: which one gets the next request, and
which ones are taken out (see :class:`ReplicaSet`; the client: :mod:`towhee_rt.client_failover`).

Policy: a request goes to the replica with the fewest requests in flight among those that are
up, ties taken in turn (round robin). A replica whose request failed as unreachable is *down*
for a backoff (the client's :class:`~towhee_rt.client_retry.RetryPolicy` delays, doubling with
each failed comeback, jittered, at most ``max_backoff``); when the backoff has passed, the next
request may go to it as a *trial* (one at a time): an answer puts it back up, another
failure takes it out again for the next, longer backoff. No probe traffic: a replica is only
tried with a real request, which the client re-sends elsewhere if the trial fails.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

from .client_inputs import max_batch_size, served_input
from .client_retry import UNAVAILABLE, RetryPolicy
from .errors import ConfigError

__all__ = ["ReplicaSet", "ReplicaStats", "model_signature", "parse_urls", "signature_changes"]
log = logging.getLogger(__name__)


def parse_urls(url: Any) -> List[str]:
    """The ``"host:port"`` addresses in ``url``: one string, several separated by commas, or a
    list or tuple of strings; a scheme (``grpc://``, ``http://``) is dropped. Raises
    :class:`~towhee_rt.errors.ConfigError` for an empty or repeated address.

        >>> parse_urls("grpc://10.0.0.1:8001, 10.0.0.2:8001")
        ['10.0.0.1:8001', '10.0.0.2:8001']
    """
    if isinstance(url, str):
        parts: Sequence[Any] = url.split(",")
    elif isinstance(url, (list, tuple)):
        parts = url
    else:
        raise ConfigError(f"url must be 'host:port', a list or tuple of them, or one string of "
                          f"them separated by commas; got {type(url).__name__} {url!r}")
    out: List[str] = []
    for part in parts:
        address = part.strip().split("://", 1)[-1] if isinstance(part, str) else ""
        if not address:
            raise ConfigError(f"url: every address must be a non-empty 'host:port', got {url!r}")
        if address in out:
            raise ConfigError(f"url: {address!r} is given twice in {url!r}; give each replica "
                              "once")
        out.append(address)
    if not out:
        raise ConfigError("url: give at least one 'host:port'")
    return out


@dataclasses.dataclass(frozen=True)
class ReplicaStats:
    """One replica as a client sees it (``ReplicaClient.replicas``)."""

    url: str
    #: False while it is taken out (its backoff, then until a trial request is answered).
    up: bool
    #: Requests being sent to it now.
    in_flight: int
    #: Requests sent to it (model reads included), and how many of them failed (any way).
    requests: int
    failures: int
    #: How often it was taken out.
    downs: int
    #: Its last transport error ("" if none).
    last_error: str


@dataclasses.dataclass
class Replica:
    """A replica's state inside :class:`ReplicaSet` (changed under its lock)."""

    url: str
    index: int
    in_flight: int = 0
    requests: int = 0
    failures: int = 0
    downs: int = 0
    #: Failed comebacks in a row: the exponent of the next backoff.
    streak: int = 0
    #: ``time.monotonic()`` from which a trial request may go to it; ``None``: up.
    down_until: Optional[float] = None
    last_error: str = ""
    #: Whether its model was read and matched the client's (set again after each down).
    checked: bool = False

    def usable(self, now: float) -> bool:
        """Up, or past its backoff with no request on it (then the next one is a trial)."""
        return self.down_until is None or (self.down_until <= now and self.in_flight == 0)


class ReplicaSet:
    """The replicas of one client: :meth:`acquire` a replica for a request, :meth:`release` it
    with the outcome. Thread-safe; ``clock`` (seconds, monotonic) and ``draw`` (the backoff's
    jitter, see :meth:`RetryPolicy.delay`) are for tests."""

    def __init__(self, urls: Sequence[str], retry: RetryPolicy,
                 clock: Callable[[], float] = time.monotonic,
                 draw: Optional[Callable[[], float]] = None):
        self._replicas = [Replica(url, k) for k, url in enumerate(urls)]
        self._retry, self._clock, self._draw = retry, clock, draw
        self._next = 0  # round robin among ties starts here
        self._lock = threading.Lock()

    @property
    def urls(self) -> Tuple[str, ...]:
        return tuple(r.url for r in self._replicas)

    def __iter__(self):
        return iter(list(self._replicas))

    def acquire(self, avoid: Optional[str] = None) -> Optional[Replica]:
        """The usable replica with the fewest requests in flight (ties: in turn), counted as
        sending one more; ``avoid``: a url to pass over unless it is the only one usable;
        ``None`` when every replica is down (see :meth:`wait_s`)."""
        with self._lock:
            now = self._clock()
            usable = [r for r in self._replicas if r.usable(now)]
            if avoid is not None and len(usable) > 1:
                usable = [r for r in usable if r.url != avoid] or usable
            if not usable:
                return None
            fewest = min(r.in_flight for r in usable)
            tied = [r for r in usable if r.in_flight == fewest]
            chosen = min(tied, key=lambda r: (r.index - self._next) % len(self._replicas))
            self._next = chosen.index + 1
            chosen.in_flight += 1
            chosen.requests += 1
            return chosen

    def release(self, replica: Replica, kind: Optional[str] = None, text: str = "") -> None:
        """One request to ``replica`` ended: answered (``kind`` ``None``), or failed as
        ``kind`` (:func:`~towhee_rt.client_retry.classify_error`); :data:`UNAVAILABLE` takes
        the replica out."""
        with self._lock:
            replica.in_flight -= 1
            if kind is None:
                if replica.down_until is not None:
                    log.info("replica %s answers again: back in use", replica.url)
                replica.down_until, replica.streak = None, 0
                return
            replica.failures += 1
            if kind == UNAVAILABLE:
                replica.last_error = text
                self._take_out(replica)

    def _take_out(self, replica: Replica) -> None:
        now = self._clock()
        if replica.down_until is not None and replica.down_until > now:
            return  # already out: requests sent before it went down fail one by one
        draw = {} if self._draw is None else {"draw": self._draw}
        backoff = self._retry.delay(replica.streak, **draw)
        replica.down_until, replica.checked = now + backoff, False
        replica.streak += 1
        replica.downs += 1
        log.warning("replica %s is unreachable (%s): taken out, tried again in %.2f s",
                    replica.url, replica.last_error, backoff)

    def usable_besides(self, url: str) -> bool:
        """Whether a replica other than ``url`` could take a request now."""
        with self._lock:
            now = self._clock()
            return any(r.usable(now) for r in self._replicas if r.url != url)

    def wait_s(self) -> float:
        """Seconds until a down replica may be tried again (0 when one is usable now)."""
        with self._lock:
            now = self._clock()
            if any(r.usable(now) for r in self._replicas):
                return 0.0
            return max(0.0, min((r.down_until for r in self._replicas
                                 if r.down_until is not None), default=0.0) - now)

    def stats(self) -> Tuple[ReplicaStats, ...]:
        """A snapshot of every replica, in the order given."""
        with self._lock:
            return tuple(ReplicaStats(r.url, r.down_until is None, r.in_flight, r.requests,
                                      r.failures, r.downs, r.last_error)
                         for r in self._replicas)


# ------------------------------------------------------------------------- model signature
def model_signature(meta: Mapping[str, Any], config: Mapping[str, Any]) -> Dict[str, Any]:
    """What must be the same on every replica behind one client: the model's inputs and
    outputs (name, datatype, shape), ``max_batch_size`` and towhee_rt's input kind, from its
    metadata and config (JSON, as tritonclient returns them)."""
    def tensors(specs) -> List[Tuple[str, str, Tuple[str, ...]]]:
        return [(s["name"], s["datatype"], tuple(str(d) for d in s.get("shape", ())))
                for s in specs]

    return {"inputs": tensors(meta.get("inputs", ())), "outputs": tensors(meta.get("outputs", ())),
            "max_batch_size": max_batch_size(config), "input kind": served_input(config).kind}


def signature_changes(reference: Mapping[str, Any], other: Mapping[str, Any]) -> List[str]:
    """``"name: reference value != other value"`` for each part of two
    :func:`model_signature` that differs (empty: same model)."""
    return [f"{name}: {reference.get(name)!r} != {other.get(name)!r}"
            for name in sorted(reference.keys() | other.keys())
            if reference.get(name) != other.get(name)]
