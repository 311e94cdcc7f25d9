"""An agent's control link talks to the master only: pinned by the master's node id from the join
reply, or, for an agent that joined before joins returned it, by the master's reserved name on
first contact. Every agent certificate may serve TLS (peers), so the CA alone proves nothing."""

from __future__ import annotations

import anyio
import pytest
from tests._fleet import Fleet

from relaysync.agent.master_link import MasterLink
from relaysync.errors import UnknownPeer
from relaysync.protocol.framing import FramedStream
from relaysync.protocol.handshake import server_hello
from relaysync.protocol.messages import Assignment, Register
from relaysync.transfer import tls


def _link(
    address: str,
    ident: tls.Identity,
    master_node_id: str | None,
    assignments: list[Assignment],
    pinned: list[str] | None = None,
) -> MasterLink:
    async def on_assignment(a: Assignment) -> None:
        assignments.append(a)

    return MasterLink(
        control_address=address,
        ctx=tls.client_context(ident),
        master_node_id=master_node_id,
        node_id=ident.node_id,
        name="web-1",
        register=Register(name="web-1", region="", group="", peer_address="127.0.0.1:9"),
        on_assignment=on_assignment,
        on_master_pinned=None if pinned is None else pinned.append,
    )


async def _against_rogue(
    rogue: tls.Identity, link_for: object
) -> tuple[list[object], BaseException | None]:
    """Run one control session of the link made by `link_for(address)` against a control server
    holding `rogue`'s certificate; return what that server received, and how the session ended."""
    got: list[object] = []

    async def rogue_master(framed: FramedStream) -> None:
        try:
            await server_hello(framed, node_id="", name="master", role="master")
            got.append(await framed.receive())  # the victim's Register
            await framed.send(Assignment(epoch=99, mappings=(), peers=()))
            got.append(await framed.receive())  # its AssignmentAck
        except Exception:  # noqa: BLE001 - the victim hung up: what a pinned link does
            pass

    error: BaseException | None = None
    async with anyio.create_task_group() as tg:
        port = await tg.start(
            tls.serve_tls, "127.0.0.1", 0, tls.server_context(rogue), rogue_master
        )
        link = link_for(f"127.0.0.1:{port}")  # type: ignore[operator]
        with anyio.fail_after(20):
            try:
                await link._session()
            except Exception as exc:  # noqa: BLE001 - whatever ended the session
                error = exc
        tg.cancel_scope.cancel()
    return got, error


def test_the_join_reply_names_the_master(fleet: Fleet) -> None:
    fleet.join("web-1")
    assert fleet.joined["web-1"]["master_node_id"] == fleet.master.node_id


def test_a_pinned_agent_refuses_a_control_server_that_is_another_agent(fleet: Fleet) -> None:
    """A fleet agent answering on the control address (DNS or ARP spoofing, a re-used IP) would
    get the agent's Register and send it Assignments (mappings with any path, run as root)."""
    victim, rogue = fleet.join("web-1"), fleet.join("rogue")
    assignments: list[Assignment] = []
    got, error = anyio.run(
        _against_rogue,
        rogue,
        lambda address: _link(address, victim, fleet.master.node_id, assignments),
    )
    assert got == [] and assignments == []
    assert isinstance(error, UnknownPeer)


def test_a_pin_altered_on_the_way_to_another_agents_node_id_is_refused(fleet: Fleet) -> None:
    """Whoever relays an agent's join can change master_node_id in the answer to a node of its
    own (joined with the token it saw): the link still wants the master's reserved name."""
    victim, rogue = fleet.join("web-1"), fleet.join("rogue")
    assignments: list[Assignment] = []
    got, error = anyio.run(
        _against_rogue, rogue, lambda address: _link(address, victim, rogue.node_id, assignments)
    )
    assert got == [] and assignments == []
    assert isinstance(error, UnknownPeer) and "not the master" in str(error)


def test_an_agent_joined_before_pinning_takes_only_a_server_named_like_the_master(
    fleet: Fleet,
) -> None:
    """master.json without master_node_id (an older release's join): a server whose certificate
    is not named relaysync-master (no agent may join under that name) is refused."""
    victim, rogue = fleet.join("web-1"), fleet.join("rogue")
    assignments: list[Assignment] = []
    pinned: list[str] = []
    got, error = anyio.run(
        _against_rogue, rogue, lambda address: _link(address, victim, None, assignments, pinned)
    )
    assert got == [] and assignments == [] and pinned == []
    assert isinstance(error, UnknownPeer) and "not the master" in str(error)


def test_an_agent_joined_before_pinning_pins_the_master_on_first_contact(fleet: Fleet) -> None:
    victim = fleet.join("web-1")
    assignments: list[Assignment] = []
    pinned: list[str] = []
    link_holder: list[MasterLink] = []

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            link = _link(f"127.0.0.1:{port}", victim, None, assignments, pinned)
            link_holder.append(link)
            async with anyio.create_task_group() as tg:
                tg.start_soon(link.serve)
                with anyio.fail_after(10):
                    while not assignments:
                        await anyio.sleep(0.01)
                tg.cancel_scope.cancel()

    anyio.run(main)
    assert pinned == [fleet.master.node_id]
    assert link_holder[0].master_node_id == fleet.master.node_id
    # From then on the pinned id is all it takes: a rogue named like the master is refused too.
    impostor = fleet.issue("relaysync-master")
    got, error = anyio.run(
        _against_rogue,
        impostor,
        lambda address: _link(address, victim, link_holder[0].master_node_id, []),
    )
    assert got == [] and isinstance(error, UnknownPeer)


@pytest.mark.parametrize(
    ("method", "path", "status", "why"),
    [
        ("DELETE", "/api/servers/web-1", 204, "was removed from the fleet"),
        # Was told it "was removed from the fleet", while the master lists it (revoked in place).
        ("POST", "/api/servers/web-1/revoke", 200, "was revoked by an operator"),
    ],
)
def test_a_removed_agent_says_how_to_join_again_and_stops_asking_often(
    fleet: Fleet,
    caplog: pytest.LogCaptureFixture,
    method: str,
    path: str,
    status: int,
    why: str,
) -> None:
    victim = fleet.join("web-1")
    assert fleet.client.request(method, path).status_code == status

    async def main() -> int:
        async with fleet.control_server() as (control, port):
            link = _link(f"127.0.0.1:{port}", victim, fleet.master.node_id, [])
            async with anyio.create_task_group() as tg:
                tg.start_soon(link.serve)
                with anyio.fail_after(10):
                    while not control.refused["removed_node"]:
                        await anyio.sleep(0.01)
                await anyio.sleep(1)  # a lost link would have been retried 3 times by now
                tg.cancel_scope.cancel()
            return control.refused["removed_node"]

    assert anyio.run(main) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    (error,) = [e for e in errors if "the master refused this agent" in e]  # said once
    assert why in error and "--token <a new join token>" in error and ".." not in error
