"""An agent's task that fails unexpectedly costs that task only, with real agent processes: a
node of the fleet that registers a peer address nobody can use (hostile, or a broken release)
must not stop its parents' other links, nor end the relay that feeds it; a target folder whose
state is broken costs that mapping, not the agent's assignment nor the agent."""

from __future__ import annotations

import contextlib
import itertools
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from anyio.from_thread import start_blocking_portal

from relaysync.agent.enrollment import join
from relaysync.agent.master_link import MasterLink
from relaysync.config.schema import AgentConfig
from relaysync.protocol.messages import Assignment, Register
from relaysync.testing.cluster import Cluster, wait_until
from relaysync.transfer import tls
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet, start_fleet

pytestmark = pytest.mark.integration

BAD_ADDRESS = "127.0.0.1:http"  # a service name: connecting raises ValueError, not an OSError
_counter = itertools.count(1)


@contextmanager
def _node_with_address(cluster: Cluster, base: Path, name: str, address: str) -> Iterator[None]:
    """A node joined with the fleet's token whose peer address in the master's store is
    `address` (the master passes it on to every agent that links to it). The master stores no
    such address from a Register now, so the node registers a usable one and its row is then
    changed in the database: a row an older master wrote, or an operator's edit."""
    cfg = AgentConfig(
        master_url=cluster.api_url, name=name, data_dir=str(base), token=cluster.join_token
    )
    identity = tls.Identity.in_directory(base / "identity")
    pin = join(cfg, identity)

    async def ignore(_assignment: Assignment) -> None:
        pass

    link = MasterLink(
        control_address=pin.control_address,
        ctx=tls.client_context(identity),
        master_node_id=pin.node_id,
        node_id=identity.node_id,
        name=name,
        register=Register(name=name, region="default", group="default", peer_address="127.0.0.1:9"),
        on_assignment=ignore,
    )
    with start_blocking_portal() as portal:
        running = portal.start_task_soon(link.serve)
        try:
            wait_until(
                lambda: cluster.api.get(f"/api/servers/{name}").json().get("state") == "up",
                timeout_s=CONVERGE_TIMEOUT_S,
                what=f"{name} up",
            )
            with contextlib.closing(sqlite3.connect(cluster.master_dir / "master.db")) as db, db:
                db.execute("UPDATE servers SET address = ? WHERE name = ?", (address, name))
            yield
        finally:
            running.cancel()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    base = tmp_path_factory.mktemp("supervision")
    f = start_fleet(base, agents=("src", "t1", "t2"))
    try:
        with _node_with_address(f.cluster, base / "evil", "evil", BAD_ADDRESS):
            yield f
    finally:
        f.cluster.stop()


def _mapping(fleet: Fleet) -> tuple[dict[str, Any], Path, Path]:
    n = next(_counter)
    src, dst = fleet.base / f"m{n}" / "source", fleet.base / f"m{n}" / "t1"
    src.mkdir(parents=True)
    (src / "f.txt").write_text("x" * 1000)
    mapping = fleet.cluster.create_mapping(
        f"m{n}", "src", src, [("t1", dst), ("evil", fleet.base / f"m{n}" / "evil")]
    )
    return mapping, src, dst


def _log(fleet: Fleet, name: str) -> str:
    return fleet.cluster.agents[name].process.log_tail(400)


def test_a_target_with_an_unusable_address_costs_its_own_link_only(fleet: Fleet) -> None:
    """Before, the link to it raised out of the source's task group: the whole mapping was
    restarted again and again, and its healthy target never got a file."""
    _mapping_, src, dst = _mapping(fleet)
    fleet.wait_converged(src, [dst])
    assert fleet.cluster.agents["src"].process.alive()


def test_a_relay_whose_child_has_an_unusable_address_keeps_running(fleet: Fleet) -> None:
    """Before, the relay's link to it raised out of the agent's own task group: the relay agent
    exited, and again at every start (its saved assignment starts the same link)."""
    mapping, src, dst = _mapping(fleet)
    r = fleet.cluster.api.put(
        f"/api/mappings/{mapping['id']}/routing",
        json={"mode": "manual", "hops": [["src", "t1"], ["t1", "evil"]]},
    )
    assert r.status_code == 200, r.text
    t1 = fleet.cluster.agents["t1"]
    wait_until(
        lambda: "link to evil" in _log(fleet, "t1") or not t1.process.alive(),
        timeout_s=CONVERGE_TIMEOUT_S,
        what="t1 relaying to evil",
    )
    assert t1.process.alive(), t1.process.log_tail(60)
    (src / "g.txt").write_text("after")
    fleet.wait_converged(src, [dst])
    t1.process.stop()
    fleet.cluster.start_agent("t1")  # its saved assignment starts the relay at once
    (src / "h.txt").write_text("after a restart")
    fleet.wait_converged(src, [dst])
    assert t1.process.alive(), t1.process.log_tail(60)


def _next_mapping_id(fleet: Fleet) -> int:
    return 1 + max((int(m["id"]) for m in fleet.cluster.api.get("/api/mappings").json()), default=0)


def _healthy_mapping(fleet: Fleet) -> tuple[Path, Path]:
    n = next(_counter)
    src, dst = fleet.base / f"m{n}" / "source", fleet.base / f"m{n}" / "t1"
    src.mkdir(parents=True)
    fleet.cluster.create_mapping(f"m{n}", "src", src, [("t1", dst)])
    (src / "f.txt").write_text("healthy")
    fleet.wait_converged(src, [dst])
    return src, dst


def _wait_refused(fleet: Fleet, name: str, mapping_id: int) -> None:
    agent = fleet.cluster.agents[name]
    wait_until(
        lambda: (
            f"of mapping {mapping_id} is refused" in _log(fleet, name) or not agent.process.alive()
        ),
        timeout_s=CONVERGE_TIMEOUT_S,
        what=f"{name} refusing mapping {mapping_id}",
    )
    assert agent.process.alive(), agent.process.log_tail(60)


def _still_serving(fleet: Fleet, src: Path, dst: Path, name: str) -> None:
    """The agent's other mapping goes on, and the agent starts again (its saved assignment
    names the broken mapping)."""
    (src / "g.txt").write_text("after")
    fleet.wait_converged(src, [dst])
    agent = fleet.cluster.agents[name]
    agent.process.stop()
    fleet.cluster.start_agent(name)
    (src / "h.txt").write_text("after a restart")
    fleet.wait_converged(src, [dst])
    assert agent.process.alive(), agent.process.log_tail(60)


def test_a_target_whose_manifest_is_corrupt_is_refused_and_the_agent_goes_on(fleet: Fleet) -> None:
    """sqlite3.DatabaseError is no OSError: before, it failed the assignment out of the
    control link and ended the agent, again at every start."""
    healthy_src, healthy_dst = _healthy_mapping(fleet)
    mapping_id = _next_mapping_id(fleet)
    state = fleet.cluster.agents["t1"].data_dir / "targets" / str(mapping_id)
    state.mkdir(parents=True)
    (state / "manifest.db").write_bytes(b"not a database" * 512)
    n = next(_counter)
    src = fleet.base / f"m{n}" / "source"
    src.mkdir(parents=True)
    made = fleet.cluster.create_mapping(f"m{n}", "src", src, [("t1", fleet.base / f"m{n}" / "t1")])
    assert made["id"] == mapping_id
    _wait_refused(fleet, "t1", mapping_id)
    _still_serving(fleet, healthy_src, healthy_dst, "t1")


def test_a_relay_whose_spool_cannot_be_made_is_refused_and_its_child_fed_around_it(
    fleet: Fleet,
) -> None:
    """Before, the OSError failed the whole assignment (the control link dropped and came back
    in a loop) and, once saved, ended the agent at every start."""
    healthy_src, healthy_dst = _healthy_mapping(fleet)
    mapping_id = _next_mapping_id(fleet)
    state = fleet.cluster.agents["t1"].data_dir / "targets" / str(mapping_id)
    state.mkdir(parents=True)
    (state / "spool").write_text("a file where the relay's spool goes")
    n = next(_counter)
    src = fleet.base / f"m{n}" / "source"
    src.mkdir(parents=True)
    (src / "f.txt").write_text("relayed")
    dsts = [fleet.base / f"m{n}" / t for t in ("t1", "t2")]
    made = fleet.cluster.create_mapping(f"m{n}", "src", src, [("t1", dsts[0]), ("t2", dsts[1])])
    assert made["id"] == mapping_id
    r = fleet.cluster.api.put(
        f"/api/mappings/{mapping_id}/routing",
        json={"mode": "manual", "hops": [["src", "t1"], ["t1", "t2"]]},
    )
    assert r.status_code == 200, r.text
    _wait_refused(fleet, "t1", mapping_id)
    fleet.wait_converged(src, [dsts[1]])  # the master re-plans t2 around the refused relay
    _still_serving(fleet, healthy_src, healthy_dst, "t1")
