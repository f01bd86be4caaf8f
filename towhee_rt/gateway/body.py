"""Read a request body under a byte limit, never holding more than the limit.

The limit is checked from ``Content-Length`` before anything is read, and again while the body
streams in (chunked requests, or a Content-Length that lies).
"""
from __future__ import annotations

import json
from typing import Any, AsyncIterator, Mapping, Optional

from .errors import GatewayError, bad_request


def too_large(limit: int, size: Optional[int] = None) -> GatewayError:
    """The 413 for a body over ``limit`` bytes."""
    told = f" ({size:,} bytes)" if size is not None else ""
    return GatewayError(413, f"the request body{told} is over the server's limit of {limit:,} "
                        "bytes (max_request_bytes; base64 images take 4/3 of their size); "
                        "send fewer or smaller items per request", param=None,
                        code="request_too_large")


def check_content_length(headers: Mapping[str, str], limit: int) -> None:
    """Refuse a request whose ``Content-Length`` is over ``limit`` or malformed."""
    value = headers.get("content-length")
    if value is None:
        return
    if not value.strip().isdigit():
        raise bad_request("the Content-Length header is not a number", param=None,
                          code="invalid_request")
    if int(value) > limit:
        raise too_large(limit, int(value))


async def read_limited(chunks: AsyncIterator[bytes], limit: int) -> bytes:
    """The body from ``chunks``, or 413 as soon as more than ``limit`` bytes arrived."""
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            raise too_large(limit)
        parts.append(chunk)
    return b"".join(parts)


def parse_json(body: bytes) -> Any:
    """The JSON of ``body``; 400 when it is not JSON."""
    if not body:
        raise bad_request("the request body is empty; send a JSON object with 'model' and "
                          "'input'", param=None, code="invalid_request")
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise bad_request(f"the request body is not valid JSON ({exc.__class__.__name__} at "
                          f"position {getattr(exc, 'pos', '?')})", param=None,
                          code="invalid_json") from None
