"""The exceptions towhee_rt raises: one base class and a few subclasses."""
from __future__ import annotations

from typing import Any, List, Optional, Sequence

from .backends.wire import ItemFailure

#: What a call does when some items fail: raise a PipelineError, or return the ItemErrors.
ERROR_MODES = ("raise", "return")


class TowheeRTError(Exception):
    """Base class of every error raised by towhee_rt."""


class ConfigError(TowheeRTError, ValueError):
    """A pipeline, operator or server configuration is invalid (raised at build time)."""


class ItemError(TowheeRTError):
    """One input item failed in one operator; the other items are unaffected.

    ``index`` is the item's position in the caller's input list, ``operator`` the registered
    operator name (``None`` when the failure happened outside any operator, e.g. transport),
    ``kind`` one of ``'bad_input'``, ``'limit'`` (both: the input's fault), ``'internal'``, or,
    from towhee_rt's client only, ``'busy'`` (:class:`ServerBusyError`) and ``'timeout'``
    (:class:`DeadlineExceededError`); ``source`` what the item was when known (a path, a URL,
    ``<encoded image, N bytes>``).
    ``str()`` is the one spelling of an item failure, shared with the server (see
    :class:`~towhee_rt.backends.operator_base.ItemFailure`). :meth:`from_failure` returns the
    subclass for the kind: :class:`BadInputError`, :class:`LimitExceededError` or
    :class:`ItemError` itself for internal failures.
    """

    kind = "internal"

    def __init__(self, index: int, operator: Optional[str], message: str,
                 source: Optional[str] = None):
        self.failure = ItemFailure(index, operator, self.kind, message, source)
        super().__init__(self.failure.describe())

    @property
    def index(self) -> int:
        return self.failure.index

    @property
    def operator(self) -> Optional[str]:
        return self.failure.operator

    @property
    def message(self) -> str:
        return self.failure.message

    @property
    def source(self) -> Optional[str]:
        return self.failure.source

    @classmethod
    def from_failure(cls, failure: ItemFailure, index: Optional[int] = None,
                     source: Optional[str] = None) -> "ItemError":
        """The exception for ``failure``, renumbered to ``index`` (the caller's position) and
        with ``source`` in place of the failure's own when given."""
        error_class = _BY_KIND.get(failure.kind, ItemError)
        return error_class(failure.index if index is None else index, failure.operator,
                           failure.message, source or failure.source)


class BadInputError(ItemError):
    """The item is not valid input for the operator (e.g. not an image)."""

    kind = "bad_input"


class LimitExceededError(BadInputError):
    """The item is over one of the operator's limits (e.g. the decompression-bomb guard)."""

    kind = "limit"


class ServerBusyError(ItemError):
    """The server turned the item's request away because it is overloaded: the model's queue
    was full (``max_queue_size``) or the request waited longer than the model's
    ``queue_timeout_ms``, also after the client's retry. Sending it again later may succeed."""

    kind = "busy"


class DeadlineExceededError(ItemError):
    """The item's request was not answered within the client's ``timeout`` (retries
    included); the server drops such requests from its queues instead of computing them."""

    kind = "timeout"


_BY_KIND = {"bad_input": BadInputError, "limit": LimitExceededError, "internal": ItemError}


class PipelineError(TowheeRTError):
    """Raised when some items of a call failed and the caller asked for errors to be raised.

    ``errors`` lists the :class:`ItemError` of every failed item; ``results`` holds every item's
    outcome in input order (a result, or the item's :class:`ItemError`), so nothing is lost.
    """

    def __init__(self, errors: List[ItemError], results: List[Any]):
        self.errors = errors
        self.results = results
        lines = "\n  ".join(str(e) for e in errors)
        super().__init__(f"{len(errors)} of {len(results)} items failed:\n  {lines}")


class ServerError(TowheeRTError):
    """tritonserver could not be found, started, or did not become ready."""


class ClientError(TowheeRTError):
    """The Triton server could not be reached or answered with an unexpected result."""


class ServerUnavailableError(ClientError):
    """The Triton server cannot be reached (down, restarting, wrong url or port), also after
    the client's retries. Raised once for a whole call, never once per item.

    ``url`` and ``protocol`` name the endpoint, ``reason`` is the last transport error,
    ``attempts`` and ``seconds`` say how long the client kept trying. ``urls``: every server
    tried; a client of several replicas raises this only when none of them can be reached
    (``url`` is then their addresses joined by commas).
    """

    def __init__(self, url: str, protocol: str, reason: str, attempts: int = 1,
                 seconds: float = 0.0, doing: str = "send requests",
                 urls: Sequence[str] = ()):
        self.url, self.protocol, self.reason = url, protocol, reason
        self.attempts, self.seconds, self.doing = attempts, seconds, doing
        self.urls = tuple(urls) or (url,)
        default_port = {"grpc": 8001, "http": 8000}.get(protocol, "its")
        tries = "1 attempt" if attempts == 1 else f"{attempts} attempts over {seconds:.1f} s"
        if len(self.urls) == 1:
            where, which = f"the Triton server at {url} ({protocol}) is", f"{url} is its"
        else:
            where = f"none of the {len(self.urls)} Triton servers {', '.join(self.urls)} " \
                    f"({protocol}) is"
            which = "each url is a"
        super().__init__(
            f"cannot {doing}: {where} unavailable ({tries}): "
            f"{reason}. Check that tritonserver is running and ready (towhee-rt serve REPO), "
            f"that {which} {protocol} endpoint (--{protocol}-port, {default_port} by "
            "default) and that no firewall or proxy is in the way; retries= and timeout= "
            "(Client(...), remote(...)) set how long the client keeps trying")

    def __reduce__(self):  # picklable (e.g. across a process pool) despite its own arguments
        return type(self), (self.url, self.protocol, self.reason, self.attempts, self.seconds,
                            self.doing, self.urls)


class DockerError(TowheeRTError):
    """A Docker image could not be built or run."""


class FormatError(TowheeRTError):
    """A model format (onnx, tensorrt, jit) could not be exported, loaded or verified."""


def check_error_mode(errors: str) -> str:
    """Raise :class:`ConfigError` unless ``errors`` is one of :data:`ERROR_MODES`."""
    if errors not in ERROR_MODES:
        raise ConfigError(f"errors must be one of {ERROR_MODES}, got {errors!r}")
    return errors
