"""Peer addresses: which host:port other servers can connect to, and the local address that
faces the master when an agent listens on every interface."""

from __future__ import annotations

import pytest

from relaysync._util.addresses import (
    address_problem,
    is_unspecified,
    join_address,
    local_address_towards,
)
from relaysync.agent.enrollment import reachable_control_address


@pytest.mark.parametrize(
    "address",
    ["127.0.0.1:8471", "10.1.2.3:1", "web-1.fra.example.com:65535", "web_1:8471", "[::1]:8471"],
)
def test_usable_addresses(address: str) -> None:
    assert address_problem(address) == ""


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("0.0.0.0:8471", "every interface"),
        ("[::]:8471", "every interface"),
        ("127.0.0.1:http", "not 1-65535"),
        ("127.0.0.1:0", "not 1-65535"),
        ("127.0.0.1:65536", "not 1-65535"),
        ("127.0.0.1", "not host:port"),
        (":8471", "not host:port"),
        ("::1:8471", "needs brackets"),
        ("[web-1]:8471", "not an IPv6 address"),
        ("bad host:8471", "neither an IP address nor a host name"),
        ("-web:8471", "neither an IP address nor a host name"),
        ("a..b:8471", "neither an IP address nor a host name"),
        ("x" * 254 + ":1", "neither an IP address nor a host name"),
        ("web/../1:8471", "neither an IP address nor a host name"),
    ],
)
def test_unusable_addresses_say_why(address: str, why: str) -> None:
    assert why in address_problem(address)


def test_every_interface_and_brackets() -> None:
    assert is_unspecified("0.0.0.0") and is_unspecified("::") and is_unspecified("[::]")
    assert is_unspecified("")
    assert not is_unspecified("127.0.0.1") and not is_unspecified("web-1")
    assert join_address("::1", 7) == "[::1]:7" == join_address("[::1]", 7)
    assert join_address("web-1", 7) == "web-1:7"


def test_the_local_address_towards_a_host_is_the_one_its_route_uses() -> None:
    assert local_address_towards("127.0.0.1", 9) == "127.0.0.1"
    with pytest.raises(OSError):
        local_address_towards("no-such-host.invalid", 9)


def test_a_control_address_on_every_interface_is_reached_at_the_master_urls_host() -> None:
    assert reachable_control_address("0.0.0.0:8472", "http://master.example:8470") == (
        "master.example:8472"
    )
    assert reachable_control_address("[::]:8472", "http://[fd00::1]:8470") == "[fd00::1]:8472"
    assert reachable_control_address("10.0.0.5:8472", "http://master:8470") == "10.0.0.5:8472"
