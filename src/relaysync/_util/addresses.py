"""Peer addresses: whether a host:port is one other servers can connect to, and which of this
host's addresses faces a given remote host."""

from __future__ import annotations

import ipaddress
import re
import socket

_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
MAX_HOSTNAME = 253


def join_address(host: str, port: int) -> str:
    """host:port, with an IPv6 literal in brackets (given with or without them)."""
    host = host.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


def is_unspecified(host: str) -> bool:
    """Whether `host` means "every interface" (0.0.0.0, ::, or empty): fine to listen on, but
    a peer connecting to it reaches its own machine."""
    ip = _ip(host.strip("[]"))
    return not host or (ip is not None and ip.is_unspecified)


def is_loopback(host: str) -> bool:
    """Whether only this machine can reach `host` (localhost, 127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    ip = _ip(host.strip("[]"))
    return ip is not None and ip.is_loopback


def address_problem(address: str) -> str:
    """Why `address` is not a host:port other servers can connect to ("" if it is one)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host:
        return "not host:port"
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        return f"port {port!r} is not 1-65535"
    bracketed = host.startswith("[") and host.endswith("]")
    if bracketed:
        host = host[1:-1]
    ip = _ip(host)
    if ip is not None:
        if ip.version == 6 and not bracketed:
            return "an IPv6 address needs brackets: [ADDRESS]:PORT"
        if ip.is_unspecified:
            return f"{host} means every interface; peers connecting to it reach their own machine"
        return ""
    if bracketed:
        return f"[{host}] is not an IPv6 address"
    labels = host.rstrip(".").split(".")
    if len(host) > MAX_HOSTNAME or not all(_LABEL.fullmatch(label) for label in labels):
        return f"{host!r} is neither an IP address nor a host name"
    return ""


def local_address_towards(host: str, port: int, family: int = socket.AF_UNSPEC) -> str:
    """The address of this machine that its routes use to reach host:port (no packet is sent:
    a UDP socket's connect only picks the route), of `family` if given.

    Raises:
        OSError: the host does not resolve (to `family`), or no route leads to it.
    """
    found, kind, proto, _, target = socket.getaddrinfo(host, port, family, socket.SOCK_DGRAM)[0]
    with socket.socket(found, kind, proto) as probe:
        probe.connect(target)
        return str(probe.getsockname()[0])
