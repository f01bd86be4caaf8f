"""Errors answered by the gateway, in OpenAI's error shape, and the mapping from towhee_rt's.

Every error body is ``{"error": {"message", "type", "param", "code"}}``. Messages name the
item index and what was expected; they never carry a traceback, a server path or the address
of the Triton server behind the gateway (those go to the gateway's log).
"""
from __future__ import annotations

import logging
from typing import Any, Dict, List, Optional, Sequence

from ..errors import ClientError, ItemError, ServerUnavailableError

log = logging.getLogger("towhee_rt.gateway")

#: OpenAI's error types.
INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
RATE_LIMIT = "rate_limit_error"
SERVER = "server_error"

#: ItemError.kind -> (HTTP status, error type, code); the order is the priority when several
#: items of one request failed differently: the caller's fault first (retrying will not help).
ITEM_STATUS = {
    "bad_input": (400, INVALID_REQUEST, "invalid_input"),
    "limit": (413, INVALID_REQUEST, "input_too_large"),
    "busy": (429, RATE_LIMIT, "server_busy"),
    "timeout": (504, SERVER, "deadline_exceeded"),
    "internal": (500, SERVER, "internal_error"),
}


class GatewayError(Exception):
    """One HTTP error answer: ``status`` and OpenAI's ``type``, ``param`` and ``code``.

    ``kind`` labels the error in the gateway's metrics (``errors_total{kind=...}``).
    """

    def __init__(self, status: int, message: str, type: str = INVALID_REQUEST,
                 param: Optional[str] = None, code: Optional[str] = None,
                 kind: Optional[str] = None, headers: Optional[Dict[str, str]] = None):
        super().__init__(message)
        self.status, self.message, self.type = status, message, type
        self.param, self.code = param, code
        self.kind = kind or code or "error"
        self.headers = dict(headers or {})

    def body(self) -> Dict[str, Any]:
        """The JSON body OpenAI's clients parse."""
        return {"error": {"message": self.message, "type": self.type, "param": self.param,
                          "code": self.code}}


def bad_request(message: str, param: Optional[str] = "input",
                code: str = "invalid_input") -> GatewayError:
    """A 400 for a request the caller must fix."""
    return GatewayError(400, message, INVALID_REQUEST, param, code)


def from_item_errors(results: Sequence[Any]) -> Optional[GatewayError]:
    """The error answering a request whose ``results`` hold :class:`ItemError` s (``None``
    when none failed): the failed item of the most caller-fixable kind, first by index, with
    the count of failed items. Embeddings requests succeed or fail whole, as OpenAI's do."""
    failed: List[ItemError] = [r for r in results if isinstance(r, ItemError)]
    if not failed:
        return None
    order = list(ITEM_STATUS)
    first = min(failed, key=lambda e: (order.index(e.kind) if e.kind in order else len(order),
                                       e.index))
    status, type_, code = ITEM_STATUS.get(first.kind, ITEM_STATUS["internal"])
    more = "" if len(failed) == 1 else f" ({len(failed)} of {len(results)} items failed)"
    if first.kind == "internal":
        log.error("item %d failed inside the pipeline: %s", first.index, first)
        message = (f"input[{first.index}]: the pipeline failed on this item (an internal "
                   f"error, logged by the server){more}")
    elif first.kind in ("busy", "timeout"):
        log.warning("item %d: %s", first.index, first)
        what = ("the embedding server is busy; retry later" if first.kind == "busy" else
                "the embedding server did not answer in time")
        message = f"input[{first.index}]: {what}{more}"
    else:
        message = f"input[{first.index}]: {_item_message(first)}{more}"
    headers = {"Retry-After": "1"} if first.kind == "busy" else None
    return GatewayError(status, message, type_, "input", code, kind=first.kind,
                        headers=headers)


def from_exception(exc: BaseException) -> GatewayError:
    """The error answering a call to the pipeline that raised ``exc`` (details are logged)."""
    if isinstance(exc, GatewayError):
        return exc
    if isinstance(exc, ServerUnavailableError):
        log.warning("the Triton server is unavailable: %s", exc)
        return GatewayError(503, "the embedding server is unavailable; retry later", SERVER,
                            None, "server_unavailable", headers={"Retry-After": "1"})
    if isinstance(exc, ClientError):
        log.error("the Triton server refused the gateway's request: %s", exc)
        return GatewayError(502, "the embedding server refused the gateway's request "
                            "(see the gateway's log)", SERVER, None, "bad_gateway")
    log.exception("unexpected error in the gateway")
    return GatewayError(500, "internal error in the gateway (see its log)", SERVER, None,
                        "internal_error")


def _item_message(error: ItemError) -> str:
    """What went wrong with one bad item, without the 'item N:' prefix the client adds (the
    gateway names the item ``input[N]``, as OpenAI names fields)."""
    parts = [f"operator {error.operator}" if error.operator else None, error.message]
    return ": ".join(p for p in parts if p)
