"""The exceptions towhee_rt raises: one base class and a few subclasses."""
from __future__ import annotations

from typing import Any, List, Optional

from .backends._operator import ItemFailure

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
    ``kind`` one of ``'bad_input'``, ``'limit'`` (both: the input's fault) or ``'internal'``,
    ``source`` what the item was when known (a path, a URL, ``<encoded image, N bytes>``).
    ``str()`` is the one spelling of an item failure, shared with the server (see
    :class:`~towhee_rt.backends._operator.ItemFailure`). :meth:`from_failure` returns the
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


class DockerError(TowheeRTError):
    """A Docker image could not be built or run."""


class FormatError(TowheeRTError):
    """A model format (onnx, tensorrt, jit) could not be exported, loaded or verified."""


def check_error_mode(errors: str) -> str:
    """Raise :class:`ConfigError` unless ``errors`` is one of :data:`ERROR_MODES`."""
    if errors not in ERROR_MODES:
        raise ConfigError(f"errors must be one of {ERROR_MODES}, got {errors!r}")
    return errors
