"""backends/fetch.py: fetch_url against a local http.server on 127.0.0.1 that the tests start.

The server misbehaves on purpose (huge, lying, slow and redirecting responses); every loop in
it is bounded in count and stops when the fixture ends.
"""
from __future__ import annotations

import http.server
import io
import shutil
import socket
import ssl
import subprocess
import threading
import time
import tracemalloc
from typing import Dict, List
from urllib.parse import parse_qs, urlsplit

import pytest
from PIL import Image

from towhee_rt.backends import fetch as fetch_module
from towhee_rt.backends.fetch import MAX_REDIRECTS, fetch_url, is_public_address
from towhee_rt.backends.operator_base import OperatorInputError, OperatorLimitError

from ..local_http import closed_port, serving  # noqa: F401 - closed_port: a fixture

MB = 2**20
BIG = 20 * MB  # served by /big*, always refused with max_bytes=1 MB
_CHUNK = b"\xab" * 65536


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (32, 24), (200, 30, 90)).save(buf, format="JPEG")
    return buf.getvalue()


JPEG = _jpeg()


class _Server(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.seen: List[str] = []  # request paths, in order
        self.sent: Dict[str, int] = {}  # body bytes written per path
        self.stop = threading.Event()

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: _Server

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_GET(self):  # noqa: N802 - http.server's name
        self.server.seen.append(self.path)
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        route = getattr(self, "_" + parts.path.strip("/").replace("-", "_"), None)
        if route is None:
            self.send_error(404)
            return
        try:
            route(query)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up: expected
            pass

    def _head(self, length=None, status=200, **headers):
        self.send_response(status)
        if length is not None:
            self.send_header("Content-Length", str(length))
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()

    def _write(self, data: bytes):
        self.wfile.write(data)
        self.server.sent[self.path] = self.server.sent.get(self.path, 0) + len(data)

    def _img(self, query):
        self._head(len(JPEG), **{"Content-Type": "image/jpeg"})
        self._write(JPEG)

    def _host(self, query):  # echoes the Host header
        body = self.headers.get("Host", "").encode()
        self._head(len(body))
        self._write(body)

    def _sized(self, query):
        n = int(query["n"])
        self._head(n)
        self._write(b"x" * n)

    def _big(self, query):
        length = {"true": BIG, "lying": 1000, "none": None}[query.get("length", "true")]
        self._head(length)
        for _ in range(BIG // len(_CHUNK)):
            if self.server.stop.is_set():
                break
            self._write(_CHUNK)

    def _short(self, query):  # declares 1,000 bytes, sends 10 and closes
        self._head(1000)
        self._write(b"0123456789")
        self.close_connection = True

    def _slow_body(self, query):  # 1 byte every 0.2 s, for at most 10 s
        self._head(50)
        for _ in range(50):
            if self.server.stop.wait(0.2):
                break
            self._write(b"x")

    def _slow_headers(self, query):  # the status line, then 1 header byte every 0.2 s
        self.wfile.write(b"HTTP/1.0 200 OK\r\n")
        for _ in range(50):
            if self.server.stop.wait(0.2):
                break
            self.wfile.write(b"X")

    def _redirect(self, query):
        self._head(0, status=int(query.get("status", 302)), Location=query["to"])

    def _chain(self, query):  # /chain?n=3 redirects 3 times, then serves the image
        n = int(query["n"])
        self._head(0, status=302, Location=f"/chain?n={n - 1}" if n else "/img")


@pytest.fixture()
def server():
    """A misbehaving http.server on 127.0.0.1; stopped (and its handlers told to stop) after."""
    srv = _Server()
    yield from serving(srv, srv.stop)


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    """A self-signed certificate (and key) for the name ``images.test``, made with openssl."""
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    folder = tmp_path_factory.mktemp("tls")
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2", "-subj",
                    "/CN=images.test", "-addext", "subjectAltName=DNS:images.test",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return cert, key


@pytest.fixture()
def tls_server(certificate, monkeypatch):
    """The same server over https, its certificate trusted through SSL_CERT_FILE."""
    cert, key = certificate
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert))
    srv = _Server()
    srv.socket = context.wrap_socket(srv.socket, server_side=True)
    yield from serving(srv, srv.stop)


@pytest.fixture()
def fake_dns(monkeypatch):
    """Resolve made-up names (``{name: ip}``) without a resolver; records every lookup."""
    names: Dict[str, str] = {}
    lookups: List[str] = []
    real = socket.getaddrinfo

    def getaddrinfo(host, port, *args, **kwargs):
        lookups.append(host)
        if host in names:
            return real(names[host], port, *args, **kwargs)
        if host.endswith(".test"):
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, port, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    return names, lookups


def fetch(url, **kwargs):
    kwargs.setdefault("max_bytes", MB)
    kwargs.setdefault("deadline_s", 5.0)
    return fetch_url(url, **kwargs)


def local(url, **kwargs):
    """Fetch from the test server: loopback must be allowed."""
    return fetch(url, allow_private=True, allow_hosts=["127.0.0.1"], **kwargs)


# -- addresses --------------------------------------------------------------------------------
@pytest.mark.parametrize("address, public", [
    ("8.8.8.8", True), ("2606:4700:4700::1111", True), ("::ffff:8.8.8.8", True),
    ("127.0.0.1", False), ("127.8.9.10", False), ("::1", False), ("0.0.0.0", False),
    ("::", False), ("10.1.2.3", False), ("172.16.0.1", False), ("192.168.1.1", False),
    ("100.64.0.1", False), ("169.254.169.254", False), ("fe80::1", False),
    ("fe80::1%eth0", False), ("fd00:ec2::254", False), ("fc00::1", False),
    ("224.0.0.1", False), ("ff02::1", False), ("240.0.0.1", False),
    ("255.255.255.255", False), ("192.0.2.1", False), ("2001:db8::1", False),
    ("::ffff:127.0.0.1", False), ("::ffff:169.254.169.254", False), ("::ffff:10.0.0.1", False),
    ("64:ff9b::7f00:1", False), ("64:ff9b::808:808", True), ("2002:7f00:1::1", False),
    ("::127.0.0.1", False), ("fec0::1", False), ("not an ip", False),
])
def test_public_addresses(address, public):
    assert is_public_address(address) is public


# -- what is refused before any connection ------------------------------------------------------
@pytest.mark.parametrize("url, fragment", [
    ("ftp://example.com/a.jpg", "only http:// and https://"),
    ("file:///etc/passwd", "only http:// and https://"),
    ("gopher://127.0.0.1:70/", "only http:// and https://"),
    ("/etc/passwd", "only http:// and https://"),
    ("http:///a.jpg", "names no host"),
    ("http://example.com:99999/a.jpg", "not a valid URL"),
])
def test_bad_urls_are_refused(url, fragment):
    with pytest.raises(OperatorInputError, match=fragment) as info:
        fetch(url)
    assert info.value.source == url and not isinstance(info.value, OperatorLimitError)


def test_loopback_is_refused_by_default_without_a_port_oracle(server, closed_port):
    errors = []
    for port in (server.server_address[1], closed_port):
        with pytest.raises(OperatorInputError) as info:
            fetch(f"http://127.0.0.1:{port}/img")
        errors.append(info.value.message)
    assert errors[0] == errors[1]
    assert "does not resolve to a public address" in errors[0]
    assert "allow_private_networks=True" in errors[0]
    assert server.seen == []  # never connected


def test_an_unknown_name_and_a_private_one_give_the_same_error(server, fake_dns):
    names, _ = fake_dns
    names["internal.test"] = "127.0.0.1"
    port = server.server_address[1]
    messages = []
    for host in ("internal.test", "nosuch.test"):
        with pytest.raises(OperatorInputError) as info:
            fetch(f"http://{host}:{port}/img")
        messages.append(info.value.message.replace(host, "HOST"))
    assert messages[0] == messages[1]
    assert server.seen == []


def test_host_not_in_allow_hosts_is_refused_without_a_lookup(server, fake_dns):
    _, lookups = fake_dns
    with pytest.raises(OperatorInputError, match="'127.0.0.1' is not allowed.*allow_urls"):
        fetch(f"{server.base}/img", allow_hosts=["images.example.com"], allow_private=True)
    assert lookups == [] and server.seen == []


def test_loopback_is_fetched_when_allowed(server):
    assert local(f"{server.base}/img") == JPEG
    assert fetch(f"{server.base}/img", allow_private=True) == JPEG  # allow_hosts=None: any


def test_the_checked_address_is_connected_to_with_the_original_host_header(server, fake_dns):
    names, lookups = fake_dns
    names["images.test"] = "127.0.0.1"
    port = server.server_address[1]
    body = fetch(f"http://Images.TEST:{port}/host", allow_hosts=["*.TEST"], allow_private=True)
    assert body == f"images.test:{port}".encode()
    assert lookups == ["images.test"]  # one lookup, no second one to rebind


def test_a_single_pattern_given_as_a_string_is_one_pattern(server):
    with pytest.raises(OperatorInputError, match="not allowed"):
        fetch(f"{server.base}/img", allow_hosts="x*", allow_private=True)  # not "x" or "*"
    assert fetch(f"{server.base}/img", allow_hosts="127.0.0.*", allow_private=True) == JPEG


def test_host_patterns(server, fake_dns):
    names, _ = fake_dns
    names.update({"a.cdn.test": "127.0.0.1", "cdn.test.evil.test": "127.0.0.1"})
    port = server.server_address[1]
    assert fetch(f"http://a.cdn.test:{port}/img", allow_hosts=["*.cdn.test"],
                 allow_private=True) == JPEG
    with pytest.raises(OperatorInputError, match="not allowed"):
        fetch(f"http://cdn.test.evil.test:{port}/img", allow_hosts=["*.cdn.test", "cdn.test"],
              allow_private=True)


# -- redirects --------------------------------------------------------------------------------
def test_redirects_are_followed_and_rechecked(server):
    assert local(f"{server.base}/redirect?to=/img") == JPEG
    assert local(f"{server.base}/redirect?status=308&to={server.base}/img") == JPEG
    assert local(f"{server.base}/chain?n={MAX_REDIRECTS - 1}") == JPEG
    with pytest.raises(OperatorInputError, match=f"more than {MAX_REDIRECTS} redirects"):
        local(f"{server.base}/chain?n={MAX_REDIRECTS}")


def test_redirect_to_another_scheme_is_refused(server):
    url = f"{server.base}/redirect?to=ftp://127.0.0.1/secret"
    with pytest.raises(OperatorInputError,
                       match="redirected to 'ftp://127.0.0.1/secret': only http:// and https://"
                       ) as info:
        local(url)
    assert info.value.source == url


def test_redirect_to_a_host_not_allowed_is_refused(server):
    port = server.server_address[1]
    with pytest.raises(OperatorInputError, match="'localhost' is not allowed"):
        local(f"{server.base}/redirect?to=http://localhost:{port}/img")
    assert server.seen == [f"/redirect?to=http://localhost:{port}/img"]


def test_redirect_to_a_private_address_is_refused(server, monkeypatch):
    # 127.0.0.1 plays a public address here; 127.0.0.2 (also loopback) a private one.
    monkeypatch.setattr(fetch_module, "is_public_address", lambda address: address == "127.0.0.1")
    port = server.server_address[1]
    assert fetch(f"{server.base}/img") == JPEG
    with pytest.raises(OperatorInputError, match="'127.0.0.2' does not resolve to a public"):
        fetch(f"{server.base}/redirect?to=http://127.0.0.2:{port}/img")
    assert server.seen == ["/img", f"/redirect?to=http://127.0.0.2:{port}/img"]


# -- responses --------------------------------------------------------------------------------
def test_http_error_names_the_status(server):
    with pytest.raises(OperatorInputError, match=r"HTTP 404 Not Found; expected a URL that "
                                                 r"serves a JPEG"):
        local(f"{server.base}/missing.jpg")


def test_tls_to_a_plain_http_server_fails_cleanly(server):
    start = time.monotonic()
    with pytest.raises(OperatorInputError) as info:
        local(f"https://127.0.0.1:{server.server_address[1]}/img")
    assert not isinstance(info.value, OperatorLimitError)
    assert time.monotonic() - start < 3


def test_https_sends_the_host_as_sni_and_checks_its_certificate(tls_server, fake_dns):
    names, lookups = fake_dns
    names["images.test"] = "127.0.0.1"
    port = tls_server.server_address[1]
    body = fetch(f"https://images.test:{port}/host", allow_hosts=["images.test"],
                 allow_private=True)
    assert body == f"images.test:{port}".encode() and lookups == ["images.test"]
    with pytest.raises(OperatorInputError, match="TLS failed.*certificate"):
        fetch(f"https://127.0.0.1:{port}/img", allow_private=True)  # not the certificate's name


def test_exactly_max_bytes_is_fine_one_more_is_not(server):
    assert local(f"{server.base}/sized?n=1000", max_bytes=1000) == b"x" * 1000
    with pytest.raises(OperatorLimitError, match=r"larger than max_bytes=999 \(its "
                       r"Content-Length is 1,000\); raise the operator param max_bytes"):
        local(f"{server.base}/sized?n=1000", max_bytes=999)


@pytest.mark.parametrize("length", ["true", "none"])
def test_a_body_over_max_bytes_is_refused_without_reading_it_all(server, length):
    tracemalloc.start()
    try:
        with pytest.raises(OperatorLimitError, match=r"larger than max_bytes=1,048,576") as info:
            local(f"{server.base}/big?length={length}", max_bytes=MB)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 * MB  # the body is 20 MB
    assert ("Content-Length" in str(info.value)) == (length == "true")


def test_a_lying_content_length_caps_what_is_read(server):
    assert local(f"{server.base}/big?length=lying") == b"\xab" * 1000


def test_a_body_cut_short_is_an_error(server):
    with pytest.raises(OperatorInputError, match="closed after 10 of 1,000 bytes"):
        local(f"{server.base}/short")


@pytest.mark.timeout(10)
@pytest.mark.parametrize("path", ["slow-body", "slow-headers"])
def test_a_slow_server_is_cut_at_the_total_deadline(server, path):
    start = time.monotonic()
    with pytest.raises(OperatorLimitError, match=r"within timeout=1s .*raise the operator param "
                                                 r"timeout"):
        local(f"{server.base}/{path}", deadline_s=1.0)
    elapsed = time.monotonic() - start
    assert 0.9 < elapsed < 3


def test_the_deadline_covers_redirects_too(server):
    start = time.monotonic()
    with pytest.raises(OperatorLimitError, match="timeout=1s"):
        local(f"{server.base}/redirect?to=/slow-body", deadline_s=1.0)
    assert time.monotonic() - start < 3
