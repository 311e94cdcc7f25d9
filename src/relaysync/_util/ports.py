"""Listening ports a server keeps across restarts: chosen below the kernel's ephemeral range.

A port from the ephemeral range (what binding port 0 gives) may be taken, while its server is
down, by any outgoing connection of the machine; the restart then fails with EADDRINUSE. A port
below that range is only ever taken by a program that asks for it by number.
"""

from __future__ import annotations

import random
import socket
from pathlib import Path

LOWEST_PORT = 10_000  # above the well-known and most registered services' ports
EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
DEFAULT_FIRST_EPHEMERAL = 32768  # Linux's default when the range cannot be read
ATTEMPTS = 1000


def first_ephemeral_port() -> int:
    """The first port of the kernel's ephemeral range."""
    try:
        return int(EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return DEFAULT_FIRST_EPHEMERAL


def stable_free_port(host: str = "127.0.0.1") -> int:
    """A port free on `host` now, between LOWEST_PORT and the ephemeral range, picked at random
    (servers starting at once must not all try the same one).

    Raises:
        OSError: no such port is free after ATTEMPTS tries, or `host` does not resolve.
    """
    family, kind, proto, _, addr = socket.getaddrinfo(
        host.strip("[]") or None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
    )[0]
    high = max(first_ephemeral_port(), LOWEST_PORT + 1)
    pick = random.SystemRandom()
    for _ in range(ATTEMPTS):
        port = pick.randrange(LOWEST_PORT, high)
        with socket.socket(family, kind, proto) as sock:
            try:
                sock.bind((addr[0], port, *addr[2:]))
            except OSError:
                continue
        return port
    raise OSError(f"no free port on {host} between {LOWEST_PORT} and {high}")
