"""Where peers reach an agent, with real processes: an agent listening on every interface
advertises its address on the route to the master, not 0.0.0.0 (a peer connecting there
reaches its own machine); an advertised address nobody can use stops the agent at start, with
the setting to change."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from relaysync.testing.cluster import Cluster, wait_until
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet, start_fleet

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = start_fleet(tmp_path_factory.mktemp("advertise"), agents=("src",))
    try:
        yield f
    finally:
        f.cluster.stop()


def _wait_logged(cluster: Cluster, name: str, text: str) -> None:
    log_tail = cluster.agents[name].process.log_tail
    wait_until(
        lambda: text in log_tail(200),
        timeout_s=CONVERGE_TIMEOUT_S,
        what=f"{text!r} in {name}'s log",
    )


def _address(cluster: Cluster, name: str) -> str:
    return str(cluster.api.get(f"/api/servers/{name}").json().get("address", ""))


def test_an_agent_listening_on_every_interface_advertises_its_route_to_the_master(
    fleet: Fleet,
) -> None:
    agent = fleet.cluster.start_agent("wide", extra_args=["--listen", "0.0.0.0:0"])
    address = wait_until(
        lambda: _address(fleet.cluster, "wide"), timeout_s=CONVERGE_TIMEOUT_S, what="wide's address"
    )
    assert address.startswith("127.0.0.1:"), address  # the master is on 127.0.0.1
    assert "advertising 127.0.0.1 to peers" in agent.process.log_tail(200)
    # and it is reachable there: a file replicates to it
    _, src, (dst,) = fleet.new_mapping(targets=("wide",))
    (src / "f.txt").write_text("reached over the advertised address")
    fleet.wait_converged(src, [dst])


def test_the_readme_fleet_every_interface_for_the_master_and_the_agents(
    tmp_path: Path,
) -> None:
    """The README's fleet: the master's control server and every agent listen on 0.0.0.0. The
    master reports its control address as 0.0.0.0:P; agents reach it at their master URL's host,
    and peers reach each other at their addresses on the route to the master."""
    cluster = Cluster(tmp_path / "fleet")
    try:
        cluster.start_master(extra_args=["--control-listen", "0.0.0.0:0"])
        for name in ("a", "b"):
            cluster.start_agent(name, extra_args=["--listen", "0.0.0.0:0"])
        for name in ("a", "b"):
            assert _address(cluster, name).startswith("127.0.0.1:")
            # 0.0.0.0 would reach the master too on one machine, not across a network; the
            # line may be written a moment after the master shows the agent up
            _wait_logged(cluster, name, "control link to master 127.0.0.1:")
        src, dst = tmp_path / "src", tmp_path / "dst"
        src.mkdir()
        cluster.create_mapping("m", "a", src, [("b", dst)])
        (src / "f.txt").write_text("over every interface")
        wait_until(
            lambda: (
                (dst / "f.txt").is_file() and (dst / "f.txt").read_text() == "over every interface"
            ),
            timeout_s=CONVERGE_TIMEOUT_S,
            what="f.txt on b",
        )
    finally:
        cluster.stop()


def test_an_unusable_advertised_address_stops_the_agent_with_what_to_change(
    fleet: Fleet,
) -> None:
    agent = fleet.cluster.start_agent(
        "typo", extra_args=["--advertise-host", "web 1.example.com"], wait=False
    )
    wait_until(lambda: not agent.process.alive(), timeout_s=CONVERGE_TIMEOUT_S, what="typo to exit")
    log = " ".join(agent.process.log_tail(60).split())  # the console folds long lines
    assert "is not usable" in log and "advertise_host (--advertise-host)" in log, log
    assert "joined the fleet" not in log  # refused before it joined
    assert agent.process.popen is not None and agent.process.popen.returncode != 0


def test_an_agent_on_ipv6_is_reached_at_its_bracketed_address(fleet: Fleet) -> None:
    fleet.cluster.start_agent("six", extra_args=["--listen", "[::1]:0"])
    address = wait_until(
        lambda: _address(fleet.cluster, "six"), timeout_s=CONVERGE_TIMEOUT_S, what="six's address"
    )
    assert address.startswith("[::1]:"), address
    _, src, (dst,) = fleet.new_mapping(targets=("six",))
    (src / "f.txt").write_text("over IPv6")
    fleet.wait_converged(src, [dst])


def test_an_agent_on_every_ipv6_interface_is_reached_over_ipv4_too(fleet: Fleet) -> None:
    """`[::]` is every interface: the agent advertises its IPv4 route to the master (127.0.0.1),
    so its peer server must take IPv4 there (it listened on IPv6 only: peers were refused)."""
    fleet.cluster.start_agent("wide6", extra_args=["--listen", "[::]:0"])
    address = wait_until(
        lambda: _address(fleet.cluster, "wide6"),
        timeout_s=CONVERGE_TIMEOUT_S,
        what="wide6's address",
    )
    assert address.startswith("127.0.0.1:"), address
    _, src, (dst,) = fleet.new_mapping(targets=("wide6",))
    (src / "f.txt").write_text("over IPv4 to an agent on [::]")
    fleet.wait_converged(src, [dst])


def test_an_agent_on_every_ipv4_interface_never_advertises_an_ipv6_route(tmp_path: Path) -> None:
    """Listening on 0.0.0.0 (IPv4 only) with its master reached over IPv6 only, the agent
    advertised [::1]:P, where its peer server does not listen: peers were refused. With no IPv4
    route to the master it stops at start, saying what to set."""
    cluster = Cluster(tmp_path / "fleet")
    try:
        cluster.start_master(extra_args=["--control-listen", "[::1]:0"])
        agent = cluster.start_agent("wide4", extra_args=["--listen", "0.0.0.0:0"], wait=False)
        wait_until(
            lambda: not agent.process.alive() or _address(cluster, "wide4"),
            timeout_s=CONVERGE_TIMEOUT_S,
            what="wide4 to register or exit",
        )
        assert _address(cluster, "wide4") == ""
        log = " ".join(agent.process.log_tail(60).split())
        assert "an IPv4 one is needed" in log and "advertise_host (--advertise-host)" in log, log
    finally:
        cluster.stop()
