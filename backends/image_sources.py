# SHIPPED: copied verbatim into every generated model (<model>/1/towhee_ops/). Imports only the
# standard library, numpy, declared third-party packages and sibling modules; never towhee_rt.
"""Where a decoder reads an input item from: the source policy of the decode params.

An item is encoded image data unless the policy says it is read: in the user's own process (the
local pipeline sets the internal param ``in_process``) a path, ``file://`` URL or ``http(s)://``
URL is read; a served decoder (inside Triton) reads a path only under the root directories of
``allow_paths`` and fetches a URL only from the host patterns of ``allow_urls`` (with
:func:`.fetch.fetch_url`). Bytes read or fetched are capped at ``max_bytes`` and a URL has
``timeout`` seconds in total. A FIFO, device or directory is never read (nor waited on).

:func:`read_source` is what every decoder (``image_decode.py``, ``image_decode_gpu.py``) reads
its items with. This module is copied verbatim into Triton model directories: it imports only
numpy and its sibling ``operator_base`` and ``fetch`` modules.
"""
from __future__ import annotations

import dataclasses
import errno
import os
import stat
from typing import Any, List, Mapping, Optional, Tuple
from urllib.parse import urlparse
from urllib.request import url2pathname

import numpy as np

from .fetch import fetch_url
from .operator_base import OperatorInputError, OperatorLimitError, Param, positive

DEFAULT_MAX_BYTES = 32 * 2**20
DEFAULT_TIMEOUT = 10.0
#: A bytes item shorter than this, without NUL, that starts with one of these is a location.
_MAX_LOCATION_BYTES = 4096
_LOCATION_PREFIXES = (b"/", b"file://", b"http://", b"https://")
_URL_PREFIXES = ("http://", "https://")
#: Open flags for reading a file: never block on a FIFO, never take a terminal.
_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0) \
    | getattr(os, "O_CLOEXEC", 0)


def _absolute_paths(value: Any) -> Optional[str]:
    """A :class:`Param` check: a list of absolute directory paths."""
    if not all(isinstance(v, str) and os.path.isabs(v) for v in value):
        return "must be a list of absolute directory paths (the roots files are read under)"
    return None


def _host_patterns(value: Any) -> Optional[str]:
    """A :class:`Param` check: a list of host patterns, not URLs."""
    if not all(isinstance(v, str) and v.strip() and "/" not in v for v in value):
        return ("must be a list of host patterns such as 'images.example.com' or "
                "'*.cdn.example.com' (hosts, not URLs)")
    return None


#: The params of :class:`SourcePolicy` (part of every decoder's params).
SOURCE_PARAMS = (
    Param("timeout", (int, float), DEFAULT_TIMEOUT,
          "seconds allowed in total to fetch one http(s) URL (connect, headers, body, redirects)",
          positive),
    Param("max_bytes", (int,), DEFAULT_MAX_BYTES,
          "refuse an encoded image (bytes sent, file read or URL fetched) larger than this",
          positive),
    Param("allow_paths", (list,), None,
          "root directories a served decoder may read files under when an item is a path "
          "(default: items are image data, never paths)", _absolute_paths),
    Param("allow_urls", (list,), None,
          "host patterns ('images.example.com', '*.cdn.example.com') a served decoder may "
          "fetch http(s) URLs from (default: items are image data, never URLs)", _host_patterns),
    Param("allow_private_networks", (bool,), False,
          "let allow_urls reach loopback, private and link-local addresses"),
    Param("in_process", (bool,), False,
          "running in the user's own process (the local pipeline): paths and URLs are read "
          "freely", internal=True),
)


@dataclasses.dataclass(frozen=True)
class SourcePolicy:
    """Where a decoder may read an item from, and how much: the decode params that say so."""

    in_process: bool = False
    allow_paths: Optional[Tuple[str, ...]] = None  # realpath'd roots
    allow_urls: Optional[Tuple[str, ...]] = None
    allow_private_networks: bool = False
    max_bytes: int = DEFAULT_MAX_BYTES
    timeout: float = DEFAULT_TIMEOUT

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "SourcePolicy":
        """The policy of a decoder's checked params (see :data:`SOURCE_PARAMS`)."""
        roots, hosts = params.get("allow_paths"), params.get("allow_urls")
        return cls(in_process=bool(params.get("in_process", False)),
                   allow_paths=None if roots is None else tuple(os.path.realpath(r)
                                                                for r in roots),
                   allow_urls=None if hosts is None else tuple(hosts),
                   allow_private_networks=bool(params.get("allow_private_networks", False)),
                   max_bytes=int(params.get("max_bytes", DEFAULT_MAX_BYTES)),
                   timeout=float(params.get("timeout", DEFAULT_TIMEOUT)))

    def reads(self, location: str) -> bool:
        """Whether ``location`` (a path or URL) is read, rather than taken as image data."""
        if self.in_process:
            return True
        if location.startswith(_URL_PREFIXES):
            return self.allow_urls is not None
        return self.allow_paths is not None


# -- reading the input ---------------------------------------------------------------------------
def _as_location(item: Any) -> Optional[str]:
    """The path/URL an item names, or None when the item is encoded image data."""
    if isinstance(item, str):
        return item
    if isinstance(item, os.PathLike):
        return os.fspath(item)
    if isinstance(item, (bytes, bytearray)) and len(item) < _MAX_LOCATION_BYTES \
            and bytes(item[:8]).startswith(_LOCATION_PREFIXES) and b"\x00" not in item:
        try:
            return bytes(item).decode("utf-8")
        except UnicodeDecodeError:
            return None
    return None


def _as_bytes(item: Any) -> bytes:
    if isinstance(item, (bytes, bytearray, memoryview)):
        return bytes(item)
    if isinstance(item, str):  # a location this decoder does not read: its text is the data
        return item.encode("utf-8", "surrogateescape")
    if isinstance(item, os.PathLike):
        return os.fsencode(item)
    if isinstance(item, np.ndarray):
        if item.dtype == np.object_ and item.ndim == 0:
            return _as_bytes(item.item())
        if item.dtype == np.uint8 and item.ndim == 1:
            return item.tobytes()
    raise OperatorInputError("expected encoded image bytes, a file path or an http(s):// / "
                             "file:// URL", source=f"<{type(item).__name__} item>")


def _check_size(data: bytes, max_bytes: int, name: str) -> bytes:
    if len(data) > max_bytes:
        raise OperatorLimitError(f"{len(data):,} bytes, more than max_bytes={max_bytes:,}; raise "
                                 "the operator param max_bytes if images this large are "
                                 "expected", source=name)
    return data


def _read_regular_file(path: str, max_bytes: int, name: str, flags: int = 0) -> bytes:
    """Read a regular file of at most ``max_bytes``; OSError for anything else.

    A FIFO, device or directory is refused by ``stat`` before it is opened and by ``fstat``
    after (O_NONBLOCK: opening a FIFO swapped in between cannot block); at most
    ``max_bytes + 1`` bytes are read, so a file that grows is caught too.
    """
    if not stat.S_ISREG(os.stat(path).st_mode):
        raise _not_regular()
    fd = os.open(path, _OPEN_FLAGS | flags)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise _not_regular()
        if info.st_size > max_bytes:
            raise _file_too_large(info.st_size, max_bytes, name)
        chunks: List[bytes] = []
        left = max_bytes + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > max_bytes:
        raise _file_too_large(len(data), max_bytes, name)
    return data


def _not_regular() -> OSError:
    return OSError(errno.EINVAL, "not a regular file: a directory, FIFO or device")


def _file_too_large(size: int, max_bytes: int, name: str) -> OperatorLimitError:
    return OperatorLimitError(f"the file has {size:,} bytes, more than max_bytes={max_bytes:,}; "
                              "raise the operator param max_bytes if images this large are "
                              "expected", source=name)


def _read_local(path: str, location: str, max_bytes: int) -> bytes:
    """Read the user's own file (in process): detailed errors help them."""
    try:
        return _read_regular_file(path, max_bytes, location)
    except OperatorLimitError:
        raise
    except (OSError, ValueError) as exc:  # ValueError: a NUL in the path
        raise OperatorInputError(f"cannot read the file ({exc.strerror or exc}); expected a "
                                 "readable JPEG, PNG, WebP, BMP or TIFF file",
                                 source=location) from None


def _under(path: str, roots: Tuple[str, ...]) -> bool:
    return any(path == root or path.startswith(root.rstrip(os.sep) + os.sep) for root in roots)


def _read_under_roots(path: str, location: str, roots: Tuple[str, ...], max_bytes: int) -> bytes:
    """Read a file a client named, only under ``roots``; one error for every refusal, so the
    server reveals nothing about which paths exist."""
    try:
        real = os.path.realpath(path)
        if not _under(real, roots):
            raise PermissionError
        # O_NOFOLLOW: a symlink swapped in after realpath is refused, not followed.
        return _read_regular_file(real, max_bytes, location, getattr(os, "O_NOFOLLOW", 0))
    except OperatorLimitError:  # only for a regular file under a root: nothing to hide
        raise
    except (OSError, ValueError):
        raise OperatorInputError("cannot read this path: not a readable regular file under the "
                                 "allowed roots (the operator param allow_paths); expected a "
                                 "JPEG, PNG, WebP, BMP or TIFF file there",
                                 source=location) from None


def read_source(item: Any, policy: SourcePolicy = SourcePolicy()) -> Tuple[str, bytes]:
    """Return ``(name, encoded bytes)`` for one input item.

    ``item`` is encoded image data (bytes); or a local path, ``file://`` URL or ``http(s)://``
    URL (as ``str``, ``os.PathLike`` or short bytes), which is read only where ``policy``
    says so (:meth:`SourcePolicy.reads`) and is otherwise taken as data itself. ``name`` is
    what error messages call the item: the path/URL, else ``"<encoded image, N bytes>"``.
    Raises OperatorLimitError for data over ``policy.max_bytes``.
    """
    location = _as_location(item)
    if location is None or not policy.reads(location):
        data = _as_bytes(item)
        name = f"<encoded image, {len(data)} bytes>"
        return name, _check_size(data, policy.max_bytes, name)
    if location.startswith(_URL_PREFIXES):
        hosts = None if policy.in_process else policy.allow_urls
        private = policy.in_process or policy.allow_private_networks
        return location, fetch_url(location, max_bytes=policy.max_bytes,
                                   deadline_s=policy.timeout, allow_hosts=hosts,
                                   allow_private=private)
    path = url2pathname(urlparse(location).path) if location.startswith("file://") else location
    if policy.in_process:
        return location, _read_local(path, location, policy.max_bytes)
    return location, _read_under_roots(path, location, policy.allow_paths or (),
                                       policy.max_bytes)


def looks_unread_location(item: Any, policy: SourcePolicy) -> bool:
    """Whether ``item`` looks like a path or URL that ``policy`` took as image data instead."""
    location = _as_location(item)
    return location is not None and not policy.reads(location)

