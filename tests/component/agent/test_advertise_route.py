"""An agent listening on every interface registers, at every control session, the address its
connection to the master goes out from: an address changed by DHCP or a failover reaches the
master at the next reconnect, without a restart (it was computed once, at start)."""

from __future__ import annotations

import time

import anyio
import pytest
from tests._fleet import TIMEOUT_S, Fleet

from relaysync._util.addresses import join_address
from relaysync.agent.advertise import follows_route, listens_ipv4_only, route_address
from relaysync.agent.master_link import MasterLink
from relaysync.protocol.messages import Assignment, Register
from relaysync.transfer import tls

STALE = "10.255.255.1:8471"  # the address the agent had when it started


def _registered_address(
    fleet: Fleet, port: int | None, *, host: str = "127.0.0.1", ipv4_only: bool = False
) -> str:
    """Run the agent's control link (its Register says STALE) to a control server on `host`
    until the master has a registration of it; return the address the master stored."""
    ident = fleet.join("web-1")

    async def on_assignment(a: Assignment) -> None:
        pass

    async def main() -> str:
        async with fleet.control_server(host) as (_, control_port):
            link = MasterLink(
                control_address=join_address(host, control_port),
                ctx=tls.client_context(ident),
                master_node_id=fleet.master.node_id,
                node_id=ident.node_id,
                name="web-1",
                register=Register(name="web-1", region="", group="", peer_address=STALE),
                on_assignment=on_assignment,
                advertise_route_port=port,
                advertise_route_ipv4_only=ipv4_only,
            )
            async with anyio.create_task_group() as tg:
                tg.start_soon(link.serve)
                deadline = time.monotonic() + TIMEOUT_S
                while not fleet.store.get_server("web-1").address:
                    assert time.monotonic() < deadline, "web-1 never registered"
                    await anyio.sleep(0.05)
                tg.cancel_scope.cancel()
            return fleet.store.get_server("web-1").address

    return anyio.run(main)


def test_the_address_on_the_route_to_the_master_is_registered_at_each_session(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    assert _registered_address(fleet, 8471) == "127.0.0.1:8471"
    assert "address on the route to the master is now 127.0.0.1:8471 (was 10.255.255.1:8471)" in (
        caplog.text
    )


def test_an_address_the_operator_chose_is_registered_as_it_is(fleet: Fleet) -> None:
    assert _registered_address(fleet, None) == STALE


def test_a_session_over_ipv6_keeps_the_address_of_a_peer_server_on_ipv4_only(
    fleet: Fleet,
) -> None:
    """An agent on 0.0.0.0 whose control connection goes out over IPv6 registered [::1]:P,
    where its peer server does not listen."""
    assert _registered_address(fleet, 8471, host="::1", ipv4_only=True) == STALE


def test_a_session_over_ipv6_is_registered_for_a_peer_server_on_every_interface(
    fleet: Fleet,
) -> None:
    assert _registered_address(fleet, 8471, host="::1") == "[::1]:8471"


@pytest.mark.parametrize(
    ("sockname", "expected"),
    [
        (("192.0.2.7", 40000), "192.0.2.7:8471"),
        (("::ffff:192.0.2.7", 40000, 0, 0), "192.0.2.7:8471"),  # IPv4 on a dual-stack socket
        (("2001:db8::7", 40000, 0, 0), "[2001:db8::7]:8471"),
        (("0.0.0.0", 0), ""),
        (None, ""),
        ((), ""),
    ],
)
def test_the_route_address_of_a_connection(sockname: object, expected: str) -> None:
    assert route_address(sockname, 8471) == expected


def test_an_ipv6_route_is_no_address_of_a_peer_server_on_ipv4_only() -> None:
    assert route_address(("2001:db8::7", 40000, 0, 0), 8471, ipv4_only=True) == ""
    assert route_address(("::ffff:192.0.2.7", 40000, 0, 0), 8471, ipv4_only=True) == (
        "192.0.2.7:8471"
    )
    assert listens_ipv4_only("0.0.0.0") and not listens_ipv4_only("::")


def test_only_an_agent_on_every_interface_with_no_address_set_follows_the_route() -> None:
    assert follows_route("", "0.0.0.0") and follows_route("", "::")
    assert not follows_route("web-1.example.com", "0.0.0.0")
    assert not follows_route("", "127.0.0.1")


def test_an_advertise_host_of_every_interface_follows_the_route_at_every_session() -> None:
    """--advertise-host 0.0.0.0 advertises the route to the master at start (nothing chosen),
    so the sessions must follow it too; they kept the start's address."""
    assert follows_route("0.0.0.0", "0.0.0.0") and follows_route("::", "127.0.0.1")
