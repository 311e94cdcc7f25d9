"""Cache addresses and site hosts: the forms accepted, and what httpx would choke on refused."""

from __future__ import annotations

import httpx
import pytest

from relaysync.errors import ConfigError
from relaysync.purge.addresses import parse_cache_address, valid_host_port
from relaysync.purge.drivers import make_driver
from relaysync.purge.site import CacheSpec


@pytest.mark.parametrize(
    "address, base",
    [
        ("127.0.0.1:6081", "http://127.0.0.1:6081"),
        ("[::1]:6081", "http://[::1]:6081"),
        ("Cache.Example:80", "http://cache.example:80"),
        ("https://cache.example", "https://cache.example:443"),
        ("https://[fd00::1]:8443", "https://[fd00::1]:8443"),
        ("http://cache", "http://cache:80"),
    ],
)
def test_accepted_addresses(address: str, base: str) -> None:
    assert parse_cache_address(address).base == base
    # and the driver sends there (no "http://https://...")
    driver = make_driver(
        CacheSpec(name="c", driver="varnish", address=address), httpx.AsyncClient()
    )
    assert driver.base == base


@pytest.mark.parametrize(
    "address",
    ["::1:6081", "cache", "cache:0", "cache:65536", "ftp://cache:21", "https://c/p", "a b:1", ""],
)
def test_refused_addresses(address: str) -> None:
    with pytest.raises(ConfigError, match="host:port"):
        parse_cache_address(address)


@pytest.mark.parametrize(
    "netloc, ok",
    [
        ("www.example.com", True),
        ("www.example.com:8080", True),
        ("[::1]", True),
        ("[2001:db8::1]:443", True),
        ("::1", False),
        ("[::1", False),
        ("[1.2.3.4]", False),
        ("host:99999", False),
        ("user@host", False),
    ],
)
def test_hosts_of_site_urls(netloc: str, ok: bool) -> None:
    assert valid_host_port(netloc) is ok
