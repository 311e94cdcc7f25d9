"""Network addresses of caches and hosts of site URLs: host:port, [IPv6]:port, an optional
http:// or https:// scheme, checked once when a site is configured so that a driver never meets
an address httpx cannot parse.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import urlsplit

from relaysync.errors import ConfigError

_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,62})(\.[A-Za-z0-9_-]{1,63})*\.?$"
)
_PORT = re.compile(r"[0-9]{1,5}")  # fullmatch: "$" would let a final newline in
DEFAULT_PORTS = {"http": 80, "https": 443}
ADDRESS_FORMS = "host:port, [IPv6]:port, or http(s)://host[:port]"


@dataclass(frozen=True, slots=True)
class CacheAddress:
    """Where a cache answers HTTP: the scheme and host:port a driver sends its requests to."""

    scheme: str  # http | https
    host: str  # a name, an IPv4 address, or an IPv6 address without brackets
    port: int

    @property
    def base(self) -> str:
        """scheme://host:port, IPv6 in brackets: the prefix of every request URL."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.scheme}://{host}:{self.port}"


def valid_host(host: str) -> bool:
    """A DNS name or an IPv4 address, or an IPv6 address in brackets ("[::1]")."""
    if host.startswith("[") and host.endswith("]"):
        try:
            return ipaddress.ip_address(host[1:-1]).version == 6
        except ValueError:
            return False
    return bool(_HOSTNAME.match(host))


def valid_host_port(netloc: str) -> bool:
    """host[:port] with a valid host and a port in 1..65535; IPv6 in brackets."""
    host, port = _split_port(netloc)
    return valid_host(host) and (port is None or _port_ok(port))


def _split_port(netloc: str) -> tuple[str, str | None]:
    if netloc.startswith("["):
        end = netloc.find("]")
        rest = netloc[end + 1 :] if end > 0 else ""
        if end < 0 or (rest and not rest.startswith(":")):
            return netloc, None  # not a bracketed host: valid_host refuses it
        return netloc[: end + 1], rest[1:] if rest else None
    host, sep, port = netloc.rpartition(":")
    return (host, port) if sep else (netloc, None)


def _port_ok(port: str) -> bool:
    return bool(_PORT.fullmatch(port)) and 0 < int(port) < 65536


def parse_cache_address(address: str) -> CacheAddress:
    """Parse a cache's address.

    Raises:
        ConfigError: not one of ADDRESS_FORMS (a bare IPv6 address without brackets, a path,
            a port out of range, another scheme).
    """
    text, scheme, default_port = address.strip(), "http", None
    if "://" in text:
        parts = urlsplit(text)
        if parts.scheme not in DEFAULT_PORTS or parts.path not in ("", "/") or parts.query:
            raise ConfigError(f"cache address {address!r} must be {ADDRESS_FORMS}")
        scheme, text = parts.scheme, parts.netloc
        default_port = str(DEFAULT_PORTS[scheme])  # a bare host:port must name its port
    host, port = _split_port(text)
    port = port if port is not None else default_port
    if port is None or not _port_ok(port) or not valid_host(host):
        raise ConfigError(
            f"cache address {address!r} must be {ADDRESS_FORMS} "
            f"(an IPv6 address goes in brackets: [::1]:6081)"
        )
    return CacheAddress(scheme, host.strip("[]").lower(), int(port))
