# SHIPPED: copied verbatim into every generated model (<model>/1/towhee_ops/). Imports only the
# standard library, numpy, declared third-party packages and sibling modules; never towhee_rt.
"""Fetch one http(s) URL safely: checked hosts and addresses, a byte cap and a total deadline.

:func:`fetch_url` is what a decoder (and the client, which downloads URLs before sending their
bytes) uses instead of ``urllib.request.urlopen``, which follows redirects to any host, fetches
loopback and private addresses, reads the whole body into memory and applies its timeout to each
socket read (so a server sending one byte a second holds the caller forever). Here:

* only ``http`` and ``https``; the host must match one of ``allow_hosts`` (fnmatch patterns,
  case-insensitive) when that is given;
* the host is resolved once and the address is checked (loopback, private, link-local,
  multicast, reserved and unspecified addresses are refused unless ``allow_private``); the
  connection goes to that checked address, never to a second lookup (DNS rebinding), with the
  URL's host in the ``Host`` header and in TLS SNI / certificate checking;
* at most :data:`MAX_REDIRECTS` redirects, each checked by the same rules;
* at most ``max_bytes`` of body (a larger ``Content-Length`` is refused before reading);
* one deadline for the whole item, redirects included: every connect, send and receive gets the
  time that is left as its socket timeout.

A refused target is never connected to, so its error says the same whether or not anything
listens there (no port scanning through the server); a host that does not resolve and one that
resolves to a non-public address give the same error too (no probing of internal DNS names).

Built on the standard library (``http.client``, ``socket``, ``ssl``, ``ipaddress``): pinning the
checked address is one ``connect`` override, and the total deadline needs a hook before every
socket read, which ``http.client`` gives through the socket object it is handed; urllib3 would
need the same overrides (its timeouts are per read too) for no gain. Known limit: the name
lookup itself (``socket.getaddrinfo``) is bounded by the system resolver's timeout, not by the
deadline.

This module is copied verbatim into Triton model directories: standard library and its sibling
``operator_base`` only.
"""
from __future__ import annotations

import fnmatch
import http.client
import io
import ipaddress
import socket
import ssl
import time
from typing import List, NamedTuple, Optional, Sequence, Tuple
from urllib.parse import urljoin, urlsplit

from .operator_base import OperatorInputError, OperatorLimitError

#: Redirects followed per item; each one is checked like the original URL.
MAX_REDIRECTS = 3
_REDIRECT_STATUSES = (301, 302, 303, 307, 308)
_CHUNK = 64 * 1024
_HEADERS = {"Accept": "image/*", "Accept-Encoding": "identity", "User-Agent": "towhee_rt"}
#: Well-known NAT64 prefixes (RFC 6052, RFC 8215): the last 32 bits are the IPv4 destination.
_NAT64 = (ipaddress.ip_network("64:ff9b::/96"), ipaddress.ip_network("64:ff9b:1::/48"))


class _Target(NamedTuple):
    """A checked URL: what to connect to and what to ask for."""

    tls: bool
    host: str
    port: int
    path: str  # path and query, as sent in the request line


def fetch_url(url: str, *, max_bytes: int, deadline_s: float,
              allow_hosts: Optional[Sequence[str]] = None, allow_private: bool = False) -> bytes:
    """Download ``url`` and return its body.

    ``allow_hosts`` (fnmatch patterns such as ``"*.cdn.example.com"``; ``None``: any host)
    applies to the URL and to every redirect; ``allow_private`` permits loopback, private and
    other non-public addresses. Raises :class:`OperatorInputError` (``source=url``) for a
    refused or failed download and :class:`OperatorLimitError` when the body is larger than
    ``max_bytes`` or the whole download, redirects included, takes longer than ``deadline_s``.

    Example::

        data = fetch_url("https://images.example.com/cat.jpg", max_bytes=32 << 20,
                         deadline_s=10.0, allow_hosts=["images.example.com"])
    """
    if isinstance(allow_hosts, str):  # one pattern, not its characters (one of them may be "*")
        allow_hosts = (allow_hosts,)
    deadline = _Deadline(deadline_s, url)
    current = url
    for hop in range(MAX_REDIRECTS + 1):
        target = _check_url(current, url, allow_hosts, redirected=hop > 0)
        address = _resolve(target.host, target.port, url, allow_private)
        location, body = _get(target, address, deadline, max_bytes, url)
        if location is None:
            return body
        current = urljoin(current, location)
    raise OperatorInputError(f"more than {MAX_REDIRECTS} redirects; expected a URL that serves "
                             f"the image itself or through at most {MAX_REDIRECTS} redirects",
                             source=url)


def is_public_address(address: str) -> bool:
    """Whether an IP address (text, IPv4 or IPv6) is a public, globally routed unicast address.

    IPv4 addresses carried inside IPv6 (IPv4-mapped ``::ffff:a.b.c.d``, NAT64, 6to4) are judged
    by the IPv4 address they lead to.
    """
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])  # drop an IPv6 zone ("fe80::1%eth0")
    except ValueError:
        return False
    if ip.version == 6:
        embedded = _embedded_ipv4(ip)
        if embedded is not None and not is_public_address(str(embedded)):
            return False
        if ip.ipv4_mapped is not None or any(ip in net for net in _NAT64):
            return True  # judged by its IPv4 destination alone (the IPv6 range is "reserved")
    return ip.is_global and not (ip.is_private or ip.is_loopback or ip.is_link_local
                                 or ip.is_multicast or ip.is_reserved or ip.is_unspecified
                                 or getattr(ip, "is_site_local", False))


def _embedded_ipv4(ip: ipaddress.IPv6Address) -> Optional[ipaddress.IPv4Address]:
    """The IPv4 destination an IPv6 address stands for (mapped, NAT64, 6to4), if any."""
    if ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    if any(ip in net for net in _NAT64):
        return ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
    return ip.sixtofour


# -- checks before any connection -------------------------------------------------------------
def _check_url(url: str, source: str, allow_hosts: Optional[Sequence[str]],
               redirected: bool) -> _Target:
    """Parse ``url`` and check its scheme and host (no lookup, no connection)."""
    where = f"redirected to {_short(url)!r}: " if redirected else ""
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise OperatorInputError(f"{where}not a valid URL ({exc}); expected an http:// or "
                                 "https:// URL", source=source) from None
    scheme = parts.scheme.lower()
    if scheme not in ("http", "https"):
        raise OperatorInputError(f"{where}only http:// and https:// URLs are fetched, not "
                                 f"{scheme + '://' if scheme else 'this'!r}", source=source)
    host = (parts.hostname or "").rstrip(".")
    if not host:
        raise OperatorInputError(f"{where}the URL names no host; expected an http:// or "
                                 "https:// URL", source=source)
    if allow_hosts is not None and not any(fnmatch.fnmatchcase(host, p.lower().rstrip("."))
                                           for p in allow_hosts):
        raise OperatorInputError(f"{where}the host {host!r} is not allowed; the operator param "
                                 "allow_urls lists the hosts images are fetched from",
                                 source=source)
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return _Target(scheme == "https", host, port or (443 if scheme == "https" else 80), path)


def _resolve(host: str, port: int, source: str, allow_private: bool
             ) -> Tuple[int, Tuple]:
    """Look ``host`` up once; return ``(family, sockaddr)`` of the first address allowed."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM,
                                   proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError):
        infos = []
    for family, _, _, _, sockaddr in infos:
        if family in (socket.AF_INET, socket.AF_INET6) and (
                allow_private or is_public_address(sockaddr[0])):
            return family, sockaddr
    if allow_private:
        raise OperatorInputError(f"cannot resolve the host {host!r}; check the URL",
                                 source=source)
    # One message for "no such host" and "not public": the server is no oracle for internal names.
    raise OperatorInputError(
        f"the host {host!r} does not resolve to a public address; loopback, private, "
        "link-local, multicast and reserved addresses are fetched only with the operator param "
        "allow_private_networks=True", source=source)


# -- the request ------------------------------------------------------------------------------
class _Deadline:
    """The end of one item's download; :meth:`left` is the socket timeout for the next step."""

    def __init__(self, seconds: float, source: str):
        self.seconds = seconds
        self.source = source
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        """Seconds left; raises the limit error once there are none."""
        remaining = self.end - time.monotonic()
        if remaining <= 0:
            raise self.error()
        return remaining

    def error(self) -> OperatorLimitError:
        return OperatorLimitError(
            f"no complete response within timeout={self.seconds:g}s (the total for connecting, "
            "headers, body and redirects); raise the operator param timeout if this server is "
            "that slow", source=self.source)


class _DeadlineSocket:
    """The socket ``http.client`` is handed: every send and receive gets the time left.

    Like a real socket, it stays open until both it and the reader :meth:`makefile` gave out
    are closed (``http.client`` closes the connection while the response is still read).
    """

    def __init__(self, sock: socket.socket, deadline: _Deadline):
        self._sock = sock
        self._deadline = deadline
        self._readers = 0
        self._closed = False

    def sendall(self, data: bytes) -> None:
        self._sock.settimeout(self._deadline.left())
        self._sock.sendall(data)

    def recv_into(self, buffer) -> int:
        self._sock.settimeout(self._deadline.left())
        return self._sock.recv_into(buffer)

    def makefile(self, mode: str = "rb") -> io.BufferedReader:
        self._readers += 1
        return io.BufferedReader(_SocketReader(self))

    def reader_closed(self) -> None:
        self._readers -= 1
        if self._closed and not self._readers:
            self._sock.close()

    def close(self) -> None:
        self._closed = True
        if not self._readers:
            self._sock.close()


class _SocketReader(io.RawIOBase):
    """A raw stream over :class:`_DeadlineSocket` (what ``socket.makefile`` would give)."""

    def __init__(self, sock: _DeadlineSocket):
        super().__init__()
        self._sock = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._sock.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            self._sock.reader_closed()
        super().close()


class _PinnedConnection(http.client.HTTPConnection):
    """HTTP(S) to an address already checked: the socket connects to ``address``; the URL's
    host goes in the ``Host`` header and in TLS SNI and certificate checking."""

    def __init__(self, target: _Target, address: Tuple[int, Tuple], deadline: _Deadline):
        super().__init__(target.host, target.port)
        self.default_port = 443 if target.tls else 80  # no ":443" in the Host header
        self._tls = target.tls
        self._address = address
        self._deadline = deadline

    def connect(self) -> None:
        family, sockaddr = self._address
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.settimeout(self._deadline.left())
            sock.connect(sockaddr)
            if self._tls:
                sock.settimeout(self._deadline.left())
                sock = ssl.create_default_context().wrap_socket(sock, server_hostname=self.host)
        except BaseException:
            sock.close()
            raise
        self.sock = _DeadlineSocket(sock, self._deadline)


def _get(target: _Target, address: Tuple[int, Tuple], deadline: _Deadline, max_bytes: int,
         source: str) -> Tuple[Optional[str], bytes]:
    """One GET: ``(redirect location, b"")`` or ``(None, body)``."""
    conn = _PinnedConnection(target, address, deadline)
    try:
        conn.request("GET", target.path, headers=_HEADERS)
        with conn.getresponse() as resp:
            if resp.status in _REDIRECT_STATUSES and resp.getheader("Location"):
                return resp.getheader("Location"), b""
            if not 200 <= resp.status < 300:
                raise OperatorInputError(f"HTTP {resp.status} {_short(resp.reason)}; expected a "
                                         "URL that serves a JPEG, PNG, WebP, BMP or TIFF image",
                                         source=source)
            return None, _read_body(resp, max_bytes, source)
    except OperatorInputError:
        raise
    except TimeoutError:
        raise deadline.error() from None
    except ssl.SSLError as exc:  # certificate errors included
        raise OperatorInputError(f"TLS failed ({_short(exc.reason or exc)}); expected an https:// "
                                 "server with a valid certificate for its host",
                                 source=source) from None
    except (http.client.HTTPException, OSError, ValueError) as exc:
        raise OperatorInputError(f"download failed ({type(exc).__name__}: {_short(exc)}); check "
                                 "the URL", source=source) from None
    finally:
        conn.close()


def _read_body(resp: http.client.HTTPResponse, max_bytes: int, source: str) -> bytes:
    """The body, read one socket read at a time and never more than ``max_bytes + 1`` bytes."""
    declared = (resp.getheader("Content-Length") or "").strip()
    if declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes, source, f" (its Content-Length is {int(declared):,})")
    chunks: List[bytes] = []
    total = 0
    while total <= max_bytes:
        chunk = resp.read1(min(_CHUNK, max_bytes + 1 - total))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
    if total > max_bytes:
        raise _too_large(max_bytes, source)
    if resp.length:  # Content-Length bytes still missing when the server closed
        raise OperatorInputError(f"the connection closed after {total:,} of "
                                 f"{total + resp.length:,} bytes; check the URL", source=source)
    return b"".join(chunks)


def _short(text: object, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters: what a server sends (a status line, a Location
    header) can be 64 KiB long, too long for an error message."""
    text = str(text)
    return text if len(text) <= limit else text[:limit] + "..."


def _too_large(max_bytes: int, source: str, detail: str = "") -> OperatorLimitError:
    return OperatorLimitError(f"the response is larger than max_bytes={max_bytes:,}{detail}; "
                              "raise the operator param max_bytes if images this large are "
                              "expected", source=source)
