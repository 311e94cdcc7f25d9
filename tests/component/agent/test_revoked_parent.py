"""A target takes a folder's data only from a parent that is a peer of its latest assignment
(real sockets, in-process agent parts). The master names no revoked node as a peer, but a spec
still names a revoked source: the target fell back to it as the parent (no routing table) and
kept taking its data (a stolen key wrote to every target of its mappings). Now the source is no
parent once it is no peer, its live session is ended when the assignment says so, and a new
one is refused as an unknown peer."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from tests.component.agent._pair import (
    SECRET,
    SRC,
    TGT,
    LoneTargetRole,
    peer_server,
    plain_link,
    source_mapping,
    target_folder,
)

from relaysync.errors import PeerRefused
from relaysync.protocol.messages import ErrorCode, MappingSpec, TargetSpec
from relaysync.transfer.target_folder import TargetFolder

WAIT_S = 30.0  # loopback, but the machine is shared


def _spec(folder: TargetFolder) -> MappingSpec:
    """The mapping as the master sends it: no routing table (the source feeds its target)."""
    return MappingSpec(
        mapping_id=1,
        name="m",
        source_node=SRC,
        source_path="/src",
        targets=(TargetSpec(node_id=TGT, path=str(folder.root), link_secret=SECRET),),
        durability="fast",
    )


def test_a_source_that_is_no_peer_is_no_parent(tmp_path: Path) -> None:
    folder = target_folder(tmp_path)
    role = LoneTargetRole(folder, peer_server(folder), (SRC,))
    role._set_routes(folder, _spec(folder))
    assert folder.parents == {SRC}
    role.peers = {}  # the master's next assignment: src revoked, so no peer
    role._set_routes(folder, _spec(folder))
    assert folder.parents == frozenset() and folder.members == frozenset()


def test_the_live_session_of_a_source_revoked_ends_and_it_is_refused_after(
    tmp_path: Path,
) -> None:
    folder = target_folder(tmp_path)
    server = peer_server(folder)
    role = LoneTargetRole(folder, server, (SRC,))
    role._set_routes(folder, _spec(folder))
    failures: list[str] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(server.serve)
            source = source_mapping(tmp_path)
            link = plain_link(source, port, on_failure=lambda _c, error, _n: failures.append(error))
            tg.start_soon(link.serve)
            with anyio.fail_after(WAIT_S):
                while not link.connected:
                    await anyio.sleep(0.01)
                await role._apply_target(1, _spec(folder))  # src still a peer: nothing ends
                assert link.connected and server._streams.get(1) is not None
                role.peers = {}  # src revoked
                await role._apply_target(1, _spec(folder))
                assert server._streams.get(1) is None  # ended before the assignment is done
                while not failures:
                    await anyio.sleep(0.01)
                with pytest.raises(PeerRefused) as refused:
                    await plain_link(source, port)._open()
            tg.cancel_scope.cancel()
        assert "no peer of this agent any more" in failures[0]
        assert refused.value.args[1] == ErrorCode.UNKNOWN_PEER.name

    anyio.run(main)
