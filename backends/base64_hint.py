# SHIPPED: copied verbatim into every generated model (<model>/1/towhee_ops/). Imports only the
# standard library, numpy, declared third-party packages and sibling modules; never towhee_rt.
"""Recognise an image that arrived base64-encoded where raw bytes were expected.

A client that puts an image into a JSON request (``{"data": ["/9j/4AAQ..."]}``) sends its
base64 text, which Triton hands to the decoder as the bytes of that text; the decoder then
sees no image. :func:`looks_like_base64_image` tells that case apart cheaply, so the error can
say what to do instead: send the file's raw bytes with Triton's binary tensor extension
(``Inference-Header-Content-Length``; see docs/http-json.md). Standard library only.
"""
from __future__ import annotations

import binascii
import re

#: How much of the input is looked at: enough base64 for every magic number below, plus
#: leading whitespace, a JSON quote and line breaks of wrapped base64 (76 columns).
_SCAN_CHARS = 512
#: Base64 characters decoded (a multiple of 4): 192 bytes, more than any magic needs.
_DECODE_CHARS = 256
#: At least this many base64 characters (12 bytes: a WebP's RIFF....WEBP) before deciding.
_MIN_CHARS = 16
_DATA_URL = re.compile(rb"\s*[\"']?data:image/", re.IGNORECASE)
_NOT_BASE64 = re.compile(rb"[^A-Za-z0-9+/=_-]")


def _image_magic(head: bytes) -> bool:
    """Whether ``head`` starts like a JPEG, PNG, GIF, WebP, BMP or TIFF file."""
    return (head.startswith(b"\xff\xd8\xff")
            or head.startswith(b"\x89PNG\r\n\x1a\n")
            or head[:6] in (b"GIF87a", b"GIF89a")
            or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
            or (head[:2] == b"BM" and len(head) >= 14 and head[6:10] == b"\0\0\0\0")
            or head[:4] in (b"II*\0", b"MM\0*"))


def looks_like_base64_image(data: bytes) -> bool:
    """Whether ``data`` looks like a base64-encoded image rather than an image's bytes.

    True for a ``data:image/...`` URL, and for standard or URL-safe base64 text (possibly
    wrapped in lines or in one pair of quotes) whose first bytes decode to a JPEG, PNG, GIF,
    WebP, BMP or TIFF magic number. Only the first few hundred bytes are read, so it is cheap
    on any input; it never raises (non-bytes and undecodable input give False). Example::

        >>> import base64
        >>> looks_like_base64_image(base64.b64encode(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(16)))
        True
        >>> looks_like_base64_image(b"\\x89PNG\\r\\n\\x1a\\n" + bytes(16))
        False
    """
    if isinstance(data, str):
        data = data.encode("ascii", "replace")
    if not isinstance(data, (bytes, bytearray, memoryview)):
        return False
    head = bytes(data[:_SCAN_CHARS])
    if _DATA_URL.match(head):
        return True
    text = head.strip().lstrip(b"\"'")
    text = b"".join(text.split())  # wrapped base64 (`base64` wraps at 76 columns)
    end = _NOT_BASE64.search(text)
    if end is not None:
        text = text[:end.start()]  # a closing quote or the truncation point
    text = text.split(b"=", 1)[0]  # padding ends the data
    text = text.replace(b"-", b"+").replace(b"_", b"/")
    usable = min(len(text), _DECODE_CHARS) // 4 * 4
    if usable < _MIN_CHARS:
        return False
    try:
        decoded = binascii.a2b_base64(text[:usable])
    except (binascii.Error, ValueError):
        return False
    return _image_magic(decoded)
