"""The servers one client sends to: reading the urls, and which server gets the next request.

One url is a set of one; several are replicas of one served pipeline. Policy
(:class:`EndpointSet`): a request goes to the endpoint with the fewest requests in flight
among those that are up, ties taken in turn (round robin). An endpoint whose request failed as
unreachable is *down* for a backoff (the client's retry delays, doubling with each failed
comeback, jittered); when the backoff has passed, the next request may go to it as a *trial*
(one at a time): an answer puts it back up, another failure takes it out again for the next,
longer backoff. No probe traffic: an endpoint is only tried with a real request, which the
client sends elsewhere if the trial fails.
"""
from __future__ import annotations

import dataclasses
import logging
import threading
import time
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple

from ..errors import ConfigError
from .failures import UNAVAILABLE

__all__ = ["Endpoint", "EndpointSet", "ReplicaStats", "parse_urls"]
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
    """One endpoint as a client sees it (``Client.replicas``)."""

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
class Endpoint:
    """One server's state inside :class:`EndpointSet` (changed under its lock)."""

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
    #: Whether its model was read and matched the client's (cleared each time it goes down).
    checked: bool = False

    def usable(self, now: float) -> bool:
        """Up, or past its backoff with no request on it (then the next one is a trial)."""
        return self.down_until is None or (self.down_until <= now and self.in_flight == 0)


class EndpointSet:
    """The endpoints of one client: :meth:`acquire` one for a request, :meth:`release` it with
    the outcome. Thread-safe. ``backoff(k)`` is the wait after the ``k``-th failed comeback in a
    row (from 0; the client passes its :meth:`RetryPolicy.delay
    <towhee_rt.client.retry.RetryPolicy.delay>`); ``clock`` (seconds, monotonic) is for tests.
    """

    def __init__(self, urls: Sequence[str], backoff: Callable[[int], float],
                 clock: Callable[[], float] = time.monotonic):
        self._endpoints = [Endpoint(url, k) for k, url in enumerate(urls)]
        self._backoff, self._clock = backoff, clock
        self._next = 0  # round robin among ties starts here
        self._lock = threading.Lock()

    @property
    def urls(self) -> Tuple[str, ...]:
        """Every endpoint's ``"host:port"``, in the order given."""
        return tuple(e.url for e in self._endpoints)

    def __len__(self) -> int:
        return len(self._endpoints)

    def __iter__(self) -> Iterator[Endpoint]:
        return iter(list(self._endpoints))

    def acquire(self, avoid: Optional[str] = None, force: bool = False) -> Optional[Endpoint]:
        """The usable endpoint with the fewest requests in flight (ties: in turn), counted as
        sending one more; ``avoid``: a url to pass over unless it is the only one usable.
        When every endpoint is out: ``None``, or with ``force`` the one back soonest."""
        with self._lock:
            now = self._clock()
            usable = [e for e in self._endpoints if e.usable(now)]
            if avoid is not None and len(usable) > 1:
                usable = [e for e in usable if e.url != avoid] or usable
            if not usable and not force:
                return None
            if not usable:
                chosen = min(self._endpoints, key=lambda e: e.down_until or 0.0)
            else:
                fewest = min(e.in_flight for e in usable)
                tied = [e for e in usable if e.in_flight == fewest]
                chosen = min(tied, key=lambda e: (e.index - self._next) % len(self._endpoints))
            self._next = chosen.index + 1
            chosen.in_flight += 1
            chosen.requests += 1
            return chosen

    def release(self, endpoint: Endpoint, kind: Optional[str] = None, text: str = "") -> None:
        """One request to ``endpoint`` ended: answered (``kind`` ``None``), or failed as
        ``kind`` (:func:`~towhee_rt.client.failures.classify_error`); :data:`UNAVAILABLE` takes
        the endpoint out."""
        with self._lock:
            endpoint.in_flight -= 1
            if kind is None:
                if endpoint.down_until is not None:
                    log.info("server %s answers again: back in use", endpoint.url)
                endpoint.down_until, endpoint.streak = None, 0
                return
            endpoint.failures += 1
            if kind == UNAVAILABLE:
                endpoint.last_error = text
                self._take_out(endpoint)

    def mark_checked(self, endpoint: Endpoint) -> None:
        """``endpoint`` serves the client's model (until it next goes down)."""
        with self._lock:
            endpoint.checked = True

    def _take_out(self, endpoint: Endpoint) -> None:
        now = self._clock()
        if endpoint.down_until is not None and endpoint.down_until > now:
            return  # already out: requests sent before it went down fail one by one
        backoff = self._backoff(endpoint.streak)
        endpoint.down_until, endpoint.checked = now + backoff, False
        endpoint.streak += 1
        endpoint.downs += 1
        log.warning("server %s is unreachable (%s): taken out, tried again in %.2f s",
                    endpoint.url, endpoint.last_error, backoff)

    def usable_besides(self, url: str) -> bool:
        """Whether an endpoint other than ``url`` could take a request now."""
        with self._lock:
            now = self._clock()
            return any(e.usable(now) for e in self._endpoints if e.url != url)

    def wait_s(self) -> float:
        """Seconds until a down endpoint may be tried again (0 when one is usable now)."""
        with self._lock:
            now = self._clock()
            if any(e.usable(now) for e in self._endpoints):
                return 0.0
            return max(0.0, min((e.down_until for e in self._endpoints
                                 if e.down_until is not None), default=0.0) - now)

    def stats(self) -> Tuple[ReplicaStats, ...]:
        """A snapshot of every endpoint, in the order given."""
        with self._lock:
            return tuple(ReplicaStats(e.url, e.down_until is None, e.in_flight, e.requests,
                                      e.failures, e.downs, e.last_error)
                         for e in self._endpoints)
