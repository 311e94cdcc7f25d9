"""The routing commands' request building: route syntax, options that exclude each other."""

from __future__ import annotations

import pytest
from rich.console import Console

from relaysync.cli.recovery_cmd import recovery_request
from relaysync.cli.routes_cmd import parse_route, routes_view, routing_request
from relaysync.cli.server_cmd import server_patch
from relaysync.errors import ConfigError


def test_parse_route() -> None:
    assert parse_route("src>a,a>b, a>c") == [("src", "a"), ("a", "b"), ("a", "c")]
    assert parse_route("src>a>b") == [("src", "a"), ("a", "b")]
    for bad in ("", "src", "src>", "src>a,,a>b"):
        with pytest.raises(ConfigError, match="PARENT>CHILD"):
            parse_route(bad)


def test_routing_request() -> None:
    assert routing_request(manual=None, auto=False, fanout=None) == {}
    assert routing_request(manual="s>a", auto=False, fanout=None) == {
        "mode": "manual",
        "hops": [("s", "a")],
    }
    assert routing_request(manual=None, auto=True, fanout=3) == {"mode": "auto", "fanout": 3}
    with pytest.raises(ConfigError, match="exclude"):
        routing_request(manual="s>a", auto=True, fanout=None)


def test_recovery_request() -> None:
    assert recovery_request("at_once", None, None) == {
        "recovery_policy": "at_once",
        "recovery_schedule": "",
    }
    assert recovery_request("reserved", "every:60", "b1") == {
        "targets": {"b1": {"policy": "reserved", "schedule": "every:60"}}
    }
    for policy, schedule in (("reserved", None), ("manual", "every:5")):
        with pytest.raises(ConfigError, match="schedule"):
            recovery_request(policy, schedule, None)


def test_server_patch() -> None:
    assert server_patch(region="r", group=None, capacity=2) == {"region": "r", "capacity_weight": 2}
    assert server_patch(region=None, group=None, capacity=None, unlock=True) == {"locked": False}
    with pytest.raises(ConfigError, match="nothing to set"):
        server_patch(region=None, group=None, capacity=None)


def test_an_avoided_hop_says_why() -> None:
    """`relaysync routes` said only "avoided hop origin>web-1 until ...": the reason (a target
    folder the agent refuses, a missing source folder) was in the agents' logs only."""
    document = {
        "source": "origin",
        "mode": "auto",
        "route_epoch": 3,
        "hops": [],
        "unreachable": ["web-1"],
        "failed": [],
        "failed_hops": [
            {
                "parent": "origin",
                "child": "web-1",
                "until": 1e9,
                "error": "target folder /srv/x is refused by this agent",
            }
        ],
        "recoveries": [],
    }
    console = Console(width=200, record=True)
    console.print(routes_view(document))
    text = console.export_text()
    assert "avoided hop origin>web-1 until" in text
    assert ": target folder /srv/x is refused by this agent" in text
