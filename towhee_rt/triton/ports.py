"""Ports and addresses of a tritonserver's endpoints: free ports picked, requested ones checked.

Ports left ``None`` (or 0) get free ports on the server's host; a port given explicitly must be
free and given for one endpoint only (:func:`resolve_ports`).
"""
from __future__ import annotations

import ipaddress
import logging
import socket
from typing import Dict, Mapping, Optional

from ..errors import ServerError

log = logging.getLogger("towhee_rt")

#: The ``towhee-rt serve`` option that sets each endpoint's port (quoted when one is busy).
_PORT_FLAGS = {"gRPC": "--grpc-port", "HTTP": "--http-port", "metrics": "--metrics-port"}


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port on ``host`` that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def check_port_free(host: str, port: int, label: str = "TCP") -> None:
    """Raise :class:`ServerError` if ``port`` on ``host`` is already bound by another process."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT is not busy
        try:
            sock.bind((host, port))
        except OSError:
            flag = _PORT_FLAGS.get(label, "--port")
            raise ServerError(f"{label} port {port} on {host} is already in use; choose another "
                              f"with {flag} or stop the process using it") from None


def resolve_ports(host: str, requested: Mapping[str, Optional[int]]) -> Dict[str, int]:
    """Check the requested ports; replace ``None``/``0`` by distinct free ports."""
    ports: Dict[str, int] = {}
    for label, port in requested.items():
        if port:
            if int(port) in ports.values():
                raise ServerError(f"{label} port {port} is also given for another endpoint; "
                                  "give each endpoint its own port")
            check_port_free(host, int(port), label)
            ports[label] = int(port)
    for label in requested:
        while label not in ports or list(ports.values()).count(ports[label]) > 1:
            ports[label] = find_free_port(host)
    return ports


def is_loopback(host: str) -> bool:
    """Whether ``host`` (an address or ``'localhost'``) is reachable from this machine only."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def warn_exposure(host: str, embedded: bool, api_key: Optional[str]) -> None:
    """Log a warning when endpoints bound to ``host`` are reachable beyond this machine: with
    the ``embedded`` tritonserver (it predates the 2025 security fixes) or without ``api_key``."""
    if is_loopback(host):
        return
    if embedded:
        log.warning("binding %s with the embedded tritonserver 2.51, which predates the "
                    "2025 security fixes (CVE-2025-23310/23311/23319/23320/23334, fixed in "
                    "Triton 25.07): use it for development on loopback only. To serve a "
                    "network, run a patched release (--docker IMAGE from "
                    "towhee_rt.build_docker_image, or --tritonserver PATH)", host)
    if api_key is None:
        log.warning("binding %s without an api_key: anyone who reaches this machine can "
                    "run inference (pass api_key=... / --api-key-file F)", host)
