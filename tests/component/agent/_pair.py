"""A source mapping and a target folder over a plain (HMAC) link, for tests of one link."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from relaysync.agent._target_role import TargetRole
from relaysync.agent.peer_server import PeerServer, RefusalLookup
from relaysync.agent.source import SourceMapping
from relaysync.protocol.messages import MappingSpec, PeerInfo, TargetSpec
from relaysync.transfer import ops
from relaysync.transfer.link_ends import TargetAddress
from relaysync.transfer.sender import TargetLink
from relaysync.transfer.target_folder import TargetFolder
from relaysync.watch.manifest import Manifest

SECRET = b"s" * 32
SRC, TGT = "a" * 64, "b" * 64


def source_mapping(tmp: Path, *, mode: str = "realtime") -> SourceMapping:
    src = tmp / "src"
    src.mkdir(exist_ok=True)
    spec = MappingSpec(
        mapping_id=1,
        name="m",
        source_node=SRC,
        source_path=str(src),
        targets=(TargetSpec(node_id=TGT, path="/t"),),
        durability="fast",
        mode=mode,
    )
    return SourceMapping(spec, tmp / "state")


def target_folder(tmp: Path) -> TargetFolder:
    root = tmp / "tgt"
    root.mkdir(exist_ok=True)
    return TargetFolder(
        mapping_id=1,
        source_node=SRC,
        root=root,
        manifest=Manifest(tmp / "tgt.db"),
        durable=False,
        link_secret=SECRET,
    )


def peer_server(
    folder: TargetFolder | None,
    *,
    name: str = "t",
    cls: type[PeerServer] = PeerServer,
    refusals: RefusalLookup | None = None,
) -> PeerServer:
    """The target's peer server on 127.0.0.1 (a free port), serving `folder` as mapping 1."""
    return cls(
        host="127.0.0.1",
        port=0,
        ctx=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER),
        node_id=TGT,
        name=name,
        folders=lambda m: folder if m == 1 else None,
        reporter=lambda f, j: lambda w, recs: None,
        refusals=refusals,
    )


def plain_link(
    source: SourceMapping, port: int, *, cls: type[TargetLink] = TargetLink, **kw: Any
) -> TargetLink:
    """The source's link to the peer server on 127.0.0.1:`port` (plain, HMAC with SECRET)."""
    return cls(
        source,
        TargetAddress(node_id=TGT, name="t", resolve=lambda: f"127.0.0.1:{port}"),
        ssl.create_default_context(),
        node_id=SRC,
        name="s",
        options=ops.SendOptions(tls=False, link_secret=SECRET),
        **kw,
    )


def serve_link_until(
    link: Callable[[int], TargetLink],
    done: Callable[[], bool],
    *,
    to: int | PeerServer,
    timeout_s: float,
) -> None:
    """Serve `link(port)` until `done()` holds (polled), then stop it; TimeoutError past
    `timeout_s`. `to` is the port, or a peer server started first whose port is taken."""

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            port = to if isinstance(to, int) else await tg.start(to.serve)
            tg.start_soon(link(port).serve)
            with anyio.fail_after(timeout_s):
                while not done():
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    anyio.run(main)


class LoneTargetRole(TargetRole):
    """The agent's target role, alone, holding the one folder (no relay below it); `peers` are
    the node ids of its latest assignment's peers."""

    def __init__(self, folder: TargetFolder, server: PeerServer, peers: tuple[str, ...]) -> None:
        self.node_id = TGT
        self.targets = {folder.mapping_id: folder}
        self.relays, self.refused, self._refusals_logged = {}, {}, {}
        self.peers = {n: PeerInfo(node_id=n, name=n[:1], address="") for n in peers}
        self._server = server

    async def _apply_relay(self, spec: MappingSpec, folder: TargetFolder) -> None:
        pass


def watched_waits(source: SourceMapping) -> list[int]:
    """The after_seq of each wait of a link for new records, as they come."""
    waits: list[int] = []
    wait_for_records = source.wait_for_records

    async def watched_wait(after_seq: int, timeout_s: float) -> None:
        waits.append(after_seq)
        await wait_for_records(after_seq, timeout_s)

    source.wait_for_records = watched_wait  # type: ignore[method-assign]
    return waits
