"""What the client sends for each item, and in how many requests.

What is sent for an item follows the served pipeline's input kind (``towhee_input_kind`` in the
ensemble's config): a *text* pipeline gets strings as they are (``'note.txt'`` is the text
"note.txt", as locally); an *image* pipeline gets bytes: local files are read and ``http(s)://``
URLs are downloaded here (:func:`towhee_rt.backends.fetch.fetch_url`), since the server does
not fetch them. An item over the server's ``max_item_bytes``, or a download that fails, becomes
that item's error without being sent. Repositories built before the input kind was recorded get
the older behaviour: local files as bytes, every other string as it is.

Requests hold at most the model's ``max_batch_size`` items (:func:`max_batch_size`) and its
``max_request_bytes`` (:func:`split_by_bytes`). ``api_key`` and ``headers`` are spelled for the
protocol by :func:`request_headers`.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence

import numpy as np

from ..backends.fetch import fetch_url
from ..backends.operator_base import OperatorInputError, OperatorLimitError
from ..backends.wire import (DEFAULT_MAX_ITEM_BYTES, PARAM_INPUT_KIND, PARAM_MAX_ITEM_BYTES,
                             PARAM_MAX_REQUEST_BYTES)
from ..errors import ConfigError
from ..triton.flags import key_headers

__all__ = ["ServedInput", "check_item_size", "encode_item", "item_source", "max_batch_size",
           "payload_bytes", "request_headers", "served_input", "split_by_bytes", "to_array"]

TEXT_KIND = "text"
_URL_PREFIXES = ("http://", "https://")


@dataclasses.dataclass(frozen=True)
class ServedInput:
    """What a served pipeline's ensemble config says about its input; ``None``: not said
    (repositories built before towhee_rt recorded it)."""

    #: The first operator's input: ``'image'``, ``'text'``, ...
    kind: Optional[str] = None
    #: Bytes one request (all its items) and one item may carry.
    max_request_bytes: Optional[int] = None
    max_item_bytes: Optional[int] = None

    @classmethod
    def from_parameters(cls, parameters: Mapping[str, str]) -> "ServedInput":
        """Read the ``towhee_*`` model config parameters (name -> string value)."""
        def number(name: str) -> Optional[int]:
            value = str(parameters.get(name, "")).strip()
            return int(value) if value.isdigit() and int(value) > 0 else None

        return cls(parameters.get(PARAM_INPUT_KIND) or None, number(PARAM_MAX_REQUEST_BYTES),
                   number(PARAM_MAX_ITEM_BYTES))


def served_input(config: Mapping[str, Any]) -> ServedInput:
    """The input kind and byte limits from a model config's (JSON) parameters."""
    parameters = {name: (value or {}).get("string_value", "")
                  for name, value in (config.get("parameters") or {}).items()}
    return ServedInput.from_parameters(parameters)


def max_batch_size(config: Mapping[str, Any]) -> Optional[int]:
    """The most items one request may hold, from a model config (JSON); ``None`` when the
    model does not say (0: no batching dimension)."""
    try:
        value = int(config.get("max_batch_size") or 0)
    except (TypeError, ValueError):
        return None
    return value if value > 0 else None


def request_headers(protocol: str, api_key: Optional[str] = None,
                    headers: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """The headers (HTTP) or metadata (gRPC: names lower-cased, as gRPC requires) sent on
    every call: ``headers`` as given, then ``api_key`` under its name for ``protocol``."""
    out: Dict[str, str] = {}
    for name, value in (headers or {}).items():
        if not isinstance(name, str) or not isinstance(value, str):
            raise ConfigError(f"headers must map names to string values, got {name!r}: "
                              f"{value!r}")
        out[name.lower() if protocol == "grpc" else name] = value
    out.update(key_headers(protocol, api_key=api_key))
    return out


def split_by_bytes(sizes: Sequence[int], limit: Optional[int]) -> List[List[int]]:
    """Consecutive groups of positions whose ``sizes`` add up to at most ``limit`` (a single
    size over it forms its own group); one group when there is no limit."""
    if not sizes:
        return []
    if not limit:
        return [list(range(len(sizes)))]
    groups: List[List[int]] = [[]]
    total = 0
    for k, size in enumerate(sizes):
        if groups[-1] and total + size > limit:
            groups.append([])
            total = 0
        groups[-1].append(k)
        total += size
    return groups


def to_array(values: List[Any], datatype: str) -> np.ndarray:
    """One input tensor of a request: ``values`` (one per item) stacked as ``datatype``."""
    if datatype != "BYTES":
        return np.stack([np.asarray(v) for v in values])
    array = np.empty((len(values), 1), dtype=np.object_)
    for i, value in enumerate(values):
        array[i, 0] = value if isinstance(value, bytes) else encode_item(value)
    return array


def encode_item(value: Any, served: ServedInput = ServedInput(), timeout: float = 60.0) -> bytes:
    """What is sent for one item to a pipeline whose input is described by ``served``.

    Text pipelines: ``str`` as UTF-8, bytes as they are. Other (image) pipelines: bytes as they
    are, a local file (path or ``file://`` URL) read, an ``http(s)://`` URL downloaded with
    ``timeout`` seconds in all. Unknown kind (older repositories): a local file read, any other
    string as UTF-8. Raises :class:`~towhee_rt.backends.operator_base.OperatorInputError` for an
    item that cannot be sent, and its subclass ``OperatorLimitError`` for one over the server's
    ``max_item_bytes`` or ``max_request_bytes``.
    """
    if isinstance(value, np.ndarray) and value.ndim == 0:
        value = value.item()
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif served.kind == TEXT_KIND:
        if not isinstance(value, str):
            raise OperatorInputError(f"expected text as str or UTF-8 bytes, got "
                                     f"{type(value).__name__}")
        data = value.encode("utf-8")
    elif _is_url(value) and served.kind is not None:
        data = _download(value, served, timeout)
    elif (path := _local_file(value)) is not None:
        data = _read_file(path, served)
    elif served.kind is not None:
        raise OperatorInputError(
            "no such local file, and not an http(s):// URL; expected the path of a file, a URL "
            "or bytes", source=os.fspath(value) if isinstance(value, (str, os.PathLike))
            else f"<{type(value).__name__} item>")
    elif isinstance(value, (str, os.PathLike)):
        data = os.fspath(value).encode("utf-8")
    else:
        raise OperatorInputError(f"cannot send an item of type {type(value).__name__}; "
                                 "expected a path, a URL, bytes or a string")
    check_item_size(len(data), served)
    return data


def check_item_size(size: int, served: ServedInput, source: Optional[str] = None) -> None:
    """Raise ``OperatorLimitError`` when an item of ``size`` bytes is over the server's
    ``max_item_bytes`` or its ``max_request_bytes`` (a request holds at least the item)."""
    for limit, name, what in ((served.max_item_bytes, "max_item_bytes", ""),
                              (served.max_request_bytes, "max_request_bytes",
                               " for a whole request")):
        if limit and size > limit:
            raise OperatorLimitError(
                f"the item carries {size:,} bytes, more than the server's {name}={limit:,}"
                f"{what}, so it was not sent; the limit is set by pipeline_config({name}=...) "
                "when building the repository", source=source)


def item_source(value: Any, kind: Optional[str]) -> Optional[str]:
    """How an item is named in its error: its local file or URL (not for text pipelines)."""
    if kind == TEXT_KIND:
        return None
    if _is_url(value) and kind is not None:
        return value
    return _local_file(value)


def payload_bytes(payload: Any) -> int:
    """Bytes an encoded item (bytes or an array) adds to a request."""
    return len(payload) if isinstance(payload, bytes) else int(getattr(payload, "nbytes", 0))


def _download(url: str, served: ServedInput, timeout: float) -> bytes:
    cap = served.max_item_bytes or served.max_request_bytes or DEFAULT_MAX_ITEM_BYTES
    try:  # the user's own process: their private networks are theirs to fetch from
        return fetch_url(url, max_bytes=cap, deadline_s=timeout, allow_private=True)
    except OperatorLimitError as exc:
        if "larger than max_bytes" in exc.message:
            raise OperatorLimitError(
                f"the download is larger than the server's max_item_bytes={cap:,}, so it was "
                "not sent; the limit is set by pipeline_config(max_item_bytes=...) when "
                "building the repository", source=url) from None
        raise OperatorLimitError(f"the download took longer than the client's timeout="
                                 f"{timeout:g}s; raise timeout= (Client(..., timeout=...), "
                                 "remote(..., timeout=...))", source=url) from None


def _read_file(path: str, served: ServedInput) -> bytes:
    cap = served.max_item_bytes or served.max_request_bytes
    try:
        check_item_size(os.path.getsize(path), served, source=path)
        with open(path, "rb") as f:
            return f.read(cap + 1) if cap else f.read()
    except OSError as exc:
        raise OperatorInputError(f"cannot read the file ({exc.strerror or exc})",
                                 source=path) from None


def _is_url(value: Any) -> bool:
    return isinstance(value, str) and value[:8].lower().startswith(_URL_PREFIXES)


def _local_file(value: Any) -> Optional[str]:
    """The local file ``value`` names (a path or ``file://`` URL), or ``None``."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str):
        return None
    path = value[len("file://"):] if value.startswith("file://") else value
    if len(path) < 4096 and "\n" not in path and os.path.isfile(path):
        return path
    return None
