"""How :class:`~towhee_rt.client.Client` reads a failed call and whether it sends it again.

Faults and overload (see :func:`classify_error` and :class:`RetryPolicy`): ``timeout`` bounds
each request, retries and waits included, and travels with it (Triton's per-request
``timeout``; an ensemble hands it to each of its steps), so a request the client gave up on is
dropped from the server's queues instead of computed. A server that cannot be reached is
retried (a fresh connection each time, so a server restarted on the same port is picked up),
then reported by one :class:`~towhee_rt.errors.ServerUnavailableError` for the whole call. A
request a busy server turns away (full queue, queue timeout) is retried once after a pause,
then its items fail as :class:`~towhee_rt.errors.ServerBusyError`; a request not answered in
time fails its items as :class:`~towhee_rt.errors.DeadlineExceededError`. Both are per item:
the call's other requests keep their results. A refused key is one
:class:`~towhee_rt.errors.ClientError` for the call, saying how to pass it
(:func:`refusal_error`).
"""
from __future__ import annotations

import dataclasses
import errno
import random
import re
from typing import Any, Callable, Dict, List, Optional

from .errors import ClientError, ConfigError, DeadlineExceededError, ItemError, ServerBusyError
from .triton.flags import API_KEY_HEADER, GRPC_HEADER_PREFIX

#: What a failed call means (:func:`classify_error`).
UNAVAILABLE, BUSY, TIMEOUT, REFUSED, OTHER = "unavailable", "busy", "timeout", "refused", "other"
DEFAULT_RETRIES = 5
DEFAULT_BACKOFF = 0.25
DEFAULT_MAX_BACKOFF = 4.0
#: A queue timeout this close to the client's own deadline is that deadline (Triton checks
#: queued requests' timeouts only when it next looks at the queue, so it reports them late).
DEADLINE_SLACK = 0.05
#: Triton's refusal of a restricted API (HTTP 403 / gRPC UNAVAILABLE), naming the header.
_RESTRICTED = re.compile(r"is restricted, expecting header '([^']+)'")
#: Triton's words when a model's queue policy turns a request away (gRPC UNAVAILABLE, HTTP 503).
_QUEUE_FULL = "Exceeds maximum queue size"
_QUEUE_TIMEOUT = "Request timeout expired"
#: A model being reloaded by the server's supervisor: its stub died ("not healthy"), or no
#: version is loaded for a moment. Sent again, the request reaches the reloaded model.
_RECOVERING = re.compile(r"Stub process '[^']*' is not healthy|has no available versions")
#: OS errors that mean the connection could not be made or was lost.
_CONNECTION_ERRNOS = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED,
                                errno.EPIPE, errno.EHOSTUNREACH, errno.ENETUNREACH,
                                errno.EHOSTDOWN, errno.ENETDOWN})


def classify_error(exc: BaseException) -> str:
    """What a failed tritonclient call means, for deciding whether to send it again.

    :data:`REFUSED`: Triton refused a missing or wrong key (never retried).
    :data:`BUSY`: a model's queue policy turned the request away: queue full, or the request
    waited past its queue timeout (gRPC UNAVAILABLE / HTTP 503 with Triton's words).
    :data:`TIMEOUT`: no answer within the client's deadline (gRPC DEADLINE_EXCEEDED, a socket
    timeout over HTTP). :data:`UNAVAILABLE`: the server cannot be reached or the connection was
    lost (any other gRPC UNAVAILABLE or HTTP 503, refused/reset/closed connections), or the
    model is being reloaded after its stub died.
    :data:`OTHER`: anything else, e.g. the items' own failures or an invalid request.
    """
    text = error_text(exc)
    status = _status(exc)
    if _RESTRICTED.search(text):
        return REFUSED
    if _QUEUE_FULL in text or _QUEUE_TIMEOUT in text:
        return BUSY
    if status == "StatusCode.DEADLINE_EXCEEDED" or isinstance(exc, TimeoutError):
        return TIMEOUT
    if status in ("StatusCode.UNAVAILABLE", "503") or _is_connection_error(exc) \
            or _RECOVERING.search(text):
        return UNAVAILABLE
    return OTHER


def error_text(exc: BaseException) -> str:
    """The message of a tritonclient (or any other) error; its type's name when it has none."""
    text = exc.message() if hasattr(exc, "message") and callable(exc.message) else str(exc)
    return text or type(exc).__name__


def _status(exc: BaseException) -> str:
    status = getattr(exc, "status", None)
    return str(status() if callable(status) else status or "")


def _is_connection_error(exc: BaseException) -> bool:
    if isinstance(exc, ConnectionError):  # refused, reset, aborted, broken pipe
        return True
    if isinstance(exc, OSError) and exc.errno in _CONNECTION_ERRNOS:
        return True
    # geventhttpclient (under tritonclient.http) when the server closes the connection mid-call
    return any(cls.__name__ == "HTTPConnectionClosed" for cls in type(exc).__mro__)


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


def connection_options(protocol: str, timeout: float) -> Dict[str, Any]:
    """Keyword arguments of a tritonclient ``InferenceServerClient`` for ``protocol``, so that a
    server restarted on the same address (or a replica back up) is reached at once."""
    if protocol == "http":
        return {"connection_timeout": timeout, "network_timeout": timeout}
    from tritonclient.grpc._client import MAX_GRPC_MESSAGE_SIZE, KeepAliveOptions

    keepalive = KeepAliveOptions()
    # tritonclient's own channel options, plus a channel-local subchannel pool: gRPC
    # otherwise shares one connection (and its reconnect backoff, up to minutes) among
    # every channel to the same address, so a fresh channel would not reconnect at once
    # to a restarted server.
    return {"channel_args": [
        ("grpc.max_send_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.max_receive_message_length", MAX_GRPC_MESSAGE_SIZE),
        ("grpc.keepalive_time_ms", keepalive.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", keepalive.keepalive_timeout_ms),
        ("grpc.keepalive_permit_without_calls", keepalive.keepalive_permit_without_calls),
        ("grpc.http2.max_pings_without_data", keepalive.http2_max_pings_without_data),
        ("grpc.use_local_subchannel_pool", 1)]}


def refusal_error(text: str, url: str, protocol: str, key_sent: bool) -> Optional[ClientError]:
    """The :class:`ClientError` for the server at ``url`` refusing a missing or wrong header
    (``key_sent``: whether the client sent an API key) in ``text``; ``None`` for any other
    error."""
    match = _RESTRICTED.search(text or "")
    if not match:
        return None
    header = match.group(1)
    name = header[len(GRPC_HEADER_PREFIX):] if header.startswith(GRPC_HEADER_PREFIX) else header
    where = f"the Triton server at {url} ({protocol})"
    if name != API_KEY_HEADER:
        return ClientError(f"{where} restricts this API to requests carrying the header "
                          f"{header!r} (Triton's --http-restricted-api/"
                          "--grpc-restricted-protocol); pass it with headers={"
                          f"{header!r}: ...}}")
    how = ("Client(url, api_key=...) or dc(items).remote(url, api_key=...), the key the "
           "server was started with (towhee_rt.serve(repo, api_key=...), towhee-rt serve "
           "--api-key-file FILE, or TOWHEE_RT_API_KEY for a container)")
    if not key_sent:
        return ClientError(f"{where} requires an API key for inference and model configs, "
                          f"and none was sent; pass it: {how}")
    return ClientError(f"{where} refused the API key this client sent (header "
                      f"{API_KEY_HEADER}): it is not the key the server was started with; "
                      f"pass the right one: {how}")


def rejection_error(kind: str, text: str, attempts: int, timeout: float, index: int,
                    source: Optional[str]) -> ItemError:
    """The error of item ``index`` of a request the server was too busy for (:data:`BUSY`) or
    that got no answer within ``timeout`` (:data:`TIMEOUT`), after ``attempts`` sends."""
    tries = "once" if attempts == 1 else f"{attempts} times"
    if kind == BUSY:
        return ServerBusyError(index, None, (
            f"the server is busy and turned the request away ({text}; sent {tries}); send "
            "fewer requests at once (concurrency=), or give the model more room (op_config "
            "max_queue_size, queue_timeout_ms, instance_count)"), source)
    return DeadlineExceededError(index, None, (
        f"no answer within the client's timeout={timeout:g}s ({text}; sent {tries}); the "
        "server drops requests it has not started by then. Raise timeout= (Client(...), "
        "remote(...)) or send fewer requests at once"), source)


class RequestFailed(Exception):
    """A request failed: its items' structured failures, or the server's or transport's text."""

    def __init__(self, failures: list, text: str):
        super().__init__(text)
        self.failures = failures
        self.text = text


class Rejected(Exception):
    """A request the server was too busy for (:data:`BUSY`) or that ran out of time
    (:data:`TIMEOUT`): each of its items fails alike."""

    def __init__(self, kind: str, text: str, attempts: int):
        super().__init__(text)
        self.kind, self.text, self.attempts = kind, text, attempts


class Cancelled(Exception):
    """The call this request belongs to has already failed; stop retrying."""
