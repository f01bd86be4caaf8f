"""Parse and check an OpenAI embeddings request: what to embed and how to answer.

Pure functions (no web framework): :func:`parse_embedding_request` turns the decoded JSON body
into an :class:`EmbeddingRequest` or raises a :class:`~towhee_rt.gateway.errors.GatewayError`
that names the field, the item index and what was expected.

Text pipelines take ``input`` as a string or a list of strings, sent as UTF-8. Image pipelines
take base64 images, as a data URL (``data:image/png;base64,...``) or a bare base64 string
(as Infinity's image modality does), decoded here and sent as encoded image bytes: items are
data, never a path or a URL for the server to open.
"""
from __future__ import annotations

import base64
import binascii
import dataclasses
import re
from typing import Any, List, Mapping, Optional, Union

from .errors import GatewayError, bad_request

TEXT_KIND = "text"
ENCODING_FORMATS = ("float", "base64")
#: Inputs one request may hold by default (OpenAI's own limit).
DEFAULT_MAX_ITEMS = 2048

_DATA_URL = re.compile(r"data:(?P<type>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,",
                       re.IGNORECASE)
_WHITESPACE = re.compile(r"\s+")


@dataclasses.dataclass(frozen=True)
class EmbeddingRequest:
    """A checked request: ``items`` to send (``str`` for text, ``bytes`` for images)."""

    model: str
    items: List[Union[str, bytes]]
    encoding_format: str = "float"


def parse_embedding_request(body: Any, *, model_name: str, input_kind: Optional[str],
                            max_items: int = DEFAULT_MAX_ITEMS,
                            max_item_bytes: Optional[int] = None,
                            dimensions: Optional[int] = None) -> EmbeddingRequest:
    """Check ``body`` (the request's JSON) against the served pipeline.

    ``model_name``: the only model served (another is a 404 ``model_not_found``).
    ``input_kind``: the pipeline's input kind (``'text'``; anything else takes images).
    ``max_items``: most inputs per request; ``max_item_bytes``: most bytes per item after
    decoding (UTF-8 text or image bytes; 413). ``dimensions``: the size the pipeline can
    shorten its output to, ``None`` when it cannot (then any ``dimensions`` is refused).
    """
    if not isinstance(body, Mapping):
        raise bad_request("the request body must be a JSON object with 'model' and 'input'",
                          param=None)
    model = body.get("model")
    if not isinstance(model, str) or not model:
        raise bad_request(f"'model' must be the name of the served model ({model_name!r})",
                          param="model", code="invalid_model")
    if model != model_name:
        raise GatewayError(404, f"the model {model!r} does not exist; this server serves "
                           f"{model_name!r} (GET /v1/models lists it)", param="model",
                           code="model_not_found")
    encoding_format = body.get("encoding_format")
    if encoding_format is None:
        encoding_format = "float"
    if encoding_format not in ENCODING_FORMATS:
        raise bad_request(f"'encoding_format' must be one of {list(ENCODING_FORMATS)}, got "
                          f"{encoding_format!r}", param="encoding_format",
                          code="invalid_encoding_format")
    _check_dimensions(body.get("dimensions"), dimensions)
    raw = _input_list(body.get("input", _MISSING), max_items)
    if input_kind == TEXT_KIND:
        items: List[Union[str, bytes]] = [_text_item(i, v, max_item_bytes)
                                          for i, v in enumerate(raw)]
    else:
        items = [decode_image_item(i, v, max_item_bytes) for i, v in enumerate(raw)]
    return EmbeddingRequest(model, items, encoding_format)


_MISSING = object()


def _input_list(value: Any, max_items: int) -> List[Any]:
    if value is _MISSING:
        raise bad_request("'input' is required: a string or a list of strings")
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list):
        raise bad_request(f"'input' must be a string or a list of strings, got "
                          f"{_type_name(value)}")
    if not values:
        raise bad_request("'input' is an empty list; send at least one item")
    if len(values) > max_items:
        raise bad_request(f"'input' holds {len(values):,} items, more than the {max_items:,} "
                          "this server takes per request; send them in several requests",
                          code="too_many_inputs")
    return values


def _text_item(index: int, value: Any, max_item_bytes: Optional[int]) -> str:
    if not isinstance(value, str):
        hint = (" (token arrays are not accepted: send the text itself)"
                if isinstance(value, (int, list)) else "")
        raise bad_request(f"input[{index}]: expected a string, got {_type_name(value)}{hint}")
    try:
        size = len(value.encode("utf-8"))
    except UnicodeEncodeError:
        raise bad_request(f"input[{index}]: expected valid Unicode text; this string holds "
                          "a lone surrogate (\\ud800-\\udfff)") from None
    _check_size(index, size, max_item_bytes, "bytes of UTF-8 text")
    return value


def decode_image_item(index: int, value: Any, max_item_bytes: Optional[int] = None) -> bytes:
    """The encoded image bytes of item ``index``: a base64 data URL or a bare base64 string.

    Refuses, naming the index, anything else (a URL, a path, a non-string) and an image over
    ``max_item_bytes`` (checked from the base64 length before decoding, then exactly).
    """
    expected = ("expected a base64-encoded image, as a data URL "
                "('data:image/png;base64,...') or a bare base64 string")
    if not isinstance(value, str):
        raise bad_request(f"input[{index}]: {expected}, got {_type_name(value)}")
    text = value.strip()
    match = _DATA_URL.match(text)
    if match:
        text = text[match.end():]
    elif text[:5].lower() == "data:":
        raise bad_request(f"input[{index}]: {expected}, got a data URL that is not base64")
    elif "://" in text[:16]:
        raise bad_request(f"input[{index}]: {expected}, got a URL (this server does not "
                          "fetch URLs: send the image itself)")
    text = _WHITESPACE.sub("", text)
    if max_item_bytes and len(text) // 4 * 3 - 2 > max_item_bytes:
        _check_size(index, len(text) // 4 * 3, max_item_bytes, "bytes of image")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise bad_request(f"input[{index}]: {expected}; this is not valid base64 (paths and "
                          "URLs are not accepted: send the image itself)") from None
    if not data:
        raise bad_request(f"input[{index}]: {expected}; it decodes to 0 bytes")
    _check_size(index, len(data), max_item_bytes, "bytes of image")
    return data


def _check_dimensions(value: Any, supported: Optional[int]) -> None:
    if value is None:
        return
    if supported is not None and value == supported:
        return
    if supported is None:
        raise bad_request("'dimensions' is not supported by this model: its embeddings have "
                          "a fixed size; leave 'dimensions' out", param="dimensions",
                          code="unsupported_parameter")
    raise bad_request(f"'dimensions' must be {supported} for this model, got {value!r}",
                      param="dimensions", code="unsupported_parameter")


def _check_size(index: int, size: int, limit: Optional[int], what: str) -> None:
    if limit and size > limit:
        raise GatewayError(413, f"input[{index}]: the item carries {size:,} {what}, more than "
                           f"the server's max_item_bytes={limit:,}", param="input",
                           code="input_too_large")


def _type_name(value: Any) -> str:
    names = {dict: "an object", list: "a list", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null", str: "a string"}
    return names.get(type(value), type(value).__name__)
