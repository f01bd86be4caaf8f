"""The exceptions towhee_rt raises: one base class and a few subclasses."""
from __future__ import annotations

from typing import Any, List, Optional


class TowheeRTError(Exception):
    """Base class of every error raised by towhee_rt."""


class ConfigError(TowheeRTError, ValueError):
    """A pipeline, operator or server configuration is invalid (raised at build time)."""


class ItemError(TowheeRTError):
    """One input item failed in one operator; the other items are unaffected.

    ``index`` is the item's position in the caller's input list, ``operator`` the registered
    operator name (``None`` when the failure happened outside any operator, e.g. transport).
    """

    def __init__(self, index: int, operator: Optional[str], message: str):
        self.index = index
        self.operator = operator
        self.message = message
        where = f"operator {operator}" if operator else "request"
        super().__init__(f"item {index}: {where}: {message}")


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
