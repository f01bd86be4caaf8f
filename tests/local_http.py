"""Test helpers shared by the tests that fetch URLs (unit: test_fetch.py,
test_decode_sources.py; integration: test_security.py, test_remote_inputs.py): a local
http.server run in a thread, and a loopback port nothing listens on.

Import the fixture into a test module to use it there: ``from ..local_http import closed_port``.
"""
from __future__ import annotations

import http.server
import socket
import threading
from typing import Iterator, Optional

import pytest


def serving(server: http.server.HTTPServer,
            stop: Optional[threading.Event] = None) -> Iterator[http.server.HTTPServer]:
    """Serve ``server`` in a thread while the fixture that ``yield from``s this lasts; then set
    ``stop`` (what the server's handlers watch, to end their loops), shut it down and close it."""
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield server
    finally:
        if stop is not None:
            stop.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.fixture()
def closed_port() -> int:
    """A loopback port nothing listens on (bound, then closed)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
