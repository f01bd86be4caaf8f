"""Whether and when the client sends a failed request again: :class:`RetryPolicy`, and the one
attempt loop every request (inference and model reads) goes through, :class:`RetryLoop`.

Each attempt goes to the endpoint the :class:`~towhee_rt.client.endpoints.EndpointSet` picks.

* **Unreachable** (:data:`~towhee_rt.client.failures.UNAVAILABLE`): the endpoint is taken out and
  the request sent at once to another that is up; with every endpoint out, the request waits for
  the first to come back (``retries`` waits at most), then is sent to it. A request is always
  sent at least once. With one url this is: ``retries`` retries, waits doubling.
* **Busy** (a full queue, a queue timeout): sent once more, at once to another endpoint that is
  up, or after a pause to the same one.
* **Timed out, refused, anything else**: not sent again.

Every wait stays inside the request's deadline (the client's ``timeout``). The loop gives up by
raising :class:`GaveUp` (the kind, the last error text, the attempts); the client turns that
into what the user sees. Both exceptions here stay inside the client package.
"""
from __future__ import annotations

import dataclasses
import random
import threading
import time
from typing import Any, Callable, List, Optional, Tuple

from ..errors import ConfigError, TowheeRTError
from .endpoints import Endpoint, EndpointSet
from .failures import BUSY, OTHER, TIMEOUT, UNAVAILABLE, classify_error, error_text

__all__ = ["DEFAULT_BACKOFF", "DEFAULT_MAX_BACKOFF", "DEFAULT_RETRIES", "RetryLoop",
           "RetryPolicy"]

DEFAULT_RETRIES = 5
DEFAULT_BACKOFF = 0.25
DEFAULT_MAX_BACKOFF = 4.0
#: A queue timeout this close to the client's own deadline is that deadline (Triton checks
#: queued requests' timeouts only when it next looks at the queue, so it reports them late).
DEADLINE_SLACK = 0.05


@dataclasses.dataclass(frozen=True)
class RetryPolicy:
    """Which failed requests the client sends again, and when; inference of embeddings is
    idempotent, so sending a request twice is safe.

    An unreachable server (:data:`UNAVAILABLE`) is retried up to ``retries`` times, a busy one
    (:data:`BUSY`) ``busy_retries`` times (default once: more would add load to a server that
    is already overloaded); nothing else is retried. Retry ``k`` (from 0) waits a random time
    between half and all of ``min(max_backoff, backoff * 2**k)`` seconds, the jitter keeping
    many clients from retrying in step. The caller also stops at the request's deadline.
    Example::

        >>> RetryPolicy(retries=3, backoff=0.5).delay(2, draw=lambda: 1.0)
        2.0
    """

    retries: int = DEFAULT_RETRIES
    backoff: float = DEFAULT_BACKOFF
    max_backoff: float = DEFAULT_MAX_BACKOFF
    busy_retries: int = 1

    def __post_init__(self):
        for name in ("retries", "busy_retries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigError(f"{name} must be an integer >= 0, got {value!r}")
        for name in ("backoff", "max_backoff"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise ConfigError(f"{name} must be a number of seconds > 0, got {value!r}")

    def delay(self, retry: int, draw: Callable[[], float] = random.random) -> float:
        """Seconds to wait before retry number ``retry`` (0 for the first); ``draw`` returns
        a number in [0, 1)."""
        ceiling = min(self.max_backoff, self.backoff * 2 ** retry)
        return ceiling * (0.5 + 0.5 * draw())

    def should_retry(self, kind: str, retried: int, busy_retried: int = 0) -> bool:
        """Whether a request that failed as ``kind``, after ``retried`` retries of which
        ``busy_retried`` followed a busy server, is sent again (deadline aside)."""
        if kind == UNAVAILABLE:
            return retried < self.retries
        if kind == BUSY:
            return retried < self.retries and busy_retried < self.busy_retries
        return False

    def schedule(self, draw: Callable[[], float] = random.random) -> List[float]:
        """The waits of every retry an unreachable server would get, in order."""
        return [self.delay(k, draw) for k in range(self.retries)]


class GaveUp(Exception):
    """The loop stopped sending a request: its last failure's ``kind`` and ``text``, after
    ``attempts`` sends over ``seconds``."""

    def __init__(self, kind: str, text: str, attempts: int, seconds: float):
        super().__init__(text)
        self.kind, self.text, self.attempts, self.seconds = kind, text, attempts, seconds


class Cancelled(Exception):
    """The call this request belongs to has already failed; it is not sent again."""


@dataclasses.dataclass
class _Progress:
    """One request's way through the loop."""

    start: float
    attempts: int = 0
    comebacks: int = 0  # waits for an endpoint to come back
    busy_retries: int = 0
    kind: str = UNAVAILABLE
    text: str = "no server could be tried"

    def give_up(self) -> GaveUp:
        return GaveUp(self.kind, self.text, self.attempts, time.monotonic() - self.start)


#: One attempt: sends to the endpoint, before the deadline (``time.monotonic()``); raises
#: tritonclient's error (classified here) or a TowheeRTError (raised as it is).
Attempt = Callable[[Endpoint, float], Any]


class RetryLoop:
    """Sends requests over ``endpoints`` per ``policy`` (see the module docstring).
    ``on_unreachable(url)`` is called after an attempt found ``url`` unreachable (the client
    drops that connection, so the next attempt opens a fresh one)."""

    def __init__(self, endpoints: EndpointSet, policy: RetryPolicy,
                 on_unreachable: Callable[[str], None] = lambda url: None):
        self.endpoints, self.policy = endpoints, policy
        self._on_unreachable = on_unreachable

    def run(self, attempt: Attempt, deadline: float,
            stop: Optional[threading.Event] = None) -> Any:
        """What ``attempt`` returns on the first endpoint that answers. Raises :class:`GaveUp`
        when the request is not sent again, :class:`Cancelled` once ``stop`` is set."""
        stop = stop or threading.Event()
        progress = _Progress(time.monotonic())
        most = (self.policy.retries + 1) * len(self.endpoints)  # bounds a flapping set
        avoid, waited = None, False
        while True:
            if stop.is_set():
                raise Cancelled()
            endpoint = self.endpoints.acquire(avoid, force=progress.attempts == 0 or waited)
            avoid, waited = None, False
            if endpoint is None:  # every endpoint is out: wait for the first to come back
                self._wait_for_comeback(progress, deadline, stop)
                waited = True
                continue
            progress.attempts += 1
            failed, result = self._try(endpoint, attempt, deadline)
            if failed is None:
                return result
            progress.kind, progress.text = failed
            if progress.kind == UNAVAILABLE and progress.attempts < most:
                continue
            if progress.kind == BUSY and self._pause_for_busy(endpoint, progress, deadline,
                                                              stop):
                avoid = endpoint.url
                continue
            raise progress.give_up()

    def _try(self, endpoint: Endpoint, attempt: Attempt,
             deadline: float) -> Tuple[Optional[Tuple[str, str]], Any]:
        """``(None, result)`` of one attempt on ``endpoint``, or ``((kind, text), None)``."""
        failed: Optional[Tuple[str, str]] = (OTHER, "")
        try:
            result = attempt(endpoint, deadline)
            failed = None
            return None, result
        except TowheeRTError:
            raise
        except Exception as exc:  # noqa: BLE001 - classified, then sent again or given up
            failed = (self._classify(exc, deadline), error_text(exc))
            if failed[0] == UNAVAILABLE:
                self._on_unreachable(endpoint.url)
            return failed, None
        finally:
            kind, text = failed or (None, "")
            self.endpoints.release(endpoint, kind, text)

    @staticmethod
    def _classify(exc: BaseException, deadline: float) -> str:
        """:func:`classify_error`, except that a busy answer at the deadline is the deadline
        (Triton dropped the request at the deadline this client sent)."""
        kind = classify_error(exc)
        if kind == BUSY and time.monotonic() >= deadline - DEADLINE_SLACK:
            return TIMEOUT
        return kind

    def _wait_for_comeback(self, progress: _Progress, deadline: float,
                           stop: threading.Event) -> None:
        delay = self.endpoints.wait_s()
        if progress.comebacks >= self.policy.retries or time.monotonic() + delay >= deadline:
            raise progress.give_up()
        progress.comebacks += 1
        if stop.wait(delay):
            raise Cancelled()

    def _pause_for_busy(self, endpoint: Endpoint, progress: _Progress, deadline: float,
                        stop: threading.Event) -> bool:
        """Whether a request ``endpoint`` was too busy for is sent again: at once when another
        endpoint is up, else after a pause; ``False`` past the busy retry or the deadline."""
        if not self.policy.should_retry(BUSY, progress.attempts - 1, progress.busy_retries):
            return False
        progress.busy_retries += 1
        alone = not self.endpoints.usable_besides(endpoint.url)
        delay = self.policy.delay(progress.attempts - 1) if alone else 0.0
        if time.monotonic() + delay >= deadline:
            return False
        if stop.wait(delay):
            raise Cancelled()
        return True
