"""What a failed tritonclient call means, and the error the user gets for it.

:func:`classify_error` sorts a failure into one of five kinds (the retry loop decides from the
kind whether to send the request again, see :mod:`towhee_rt.client.retry`);
:func:`refusal_error` and :func:`rejection_error` write the errors a refused key and a busy or
late request end as. The error texts are the ones Triton 2.51 and tritonclient 2.73 produce.
"""
from __future__ import annotations

import errno
import re
from typing import Optional

from ..backends.deadlines import DEADLINE_WORDS
from ..errors import ClientError, DeadlineExceededError, ItemError, ServerBusyError
from ..triton.flags import API_KEY_HEADER, GRPC_HEADER_PREFIX

__all__ = ["UNAVAILABLE", "BUSY", "TIMEOUT", "REFUSED", "OTHER", "classify_error", "error_text",
           "refusal_error", "rejection_error"]

#: What a failed call means (:func:`classify_error`).
UNAVAILABLE, BUSY, TIMEOUT, REFUSED, OTHER = "unavailable", "busy", "timeout", "refused", "other"
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
    timeout over HTTP), or a step dropped the request because the time the client gave it is
    up or too short for the step (``backends/deadlines.py``: sending it again cannot help). :data:`UNAVAILABLE`: the server cannot be reached or the connection was
    lost (any other gRPC UNAVAILABLE or HTTP 503, refused/reset/closed connections), or the
    model is being reloaded after its stub died.
    :data:`OTHER`: anything else, e.g. the items' own failures or an invalid request.
    """
    text = error_text(exc)
    status = _status(exc)
    if _RESTRICTED.search(text):
        return REFUSED
    if DEADLINE_WORDS in text:
        return TIMEOUT
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
