"""A plain (HMAC) link opened while a route change reaches the two agents (real sockets,
in-process agents' parts): refused as a stale route, as on a TLS link, not as an authentication
failure; the sender retries quietly, without reporting a failed hop, and gets through once the
target runs the new table. A wrong secret under the same table stays an authentication failure.

Each test forces the moment itself (the two nodes' epochs and parents set apart), so none
depends on when an assignment happens to arrive."""

from __future__ import annotations

import logging
import os
import ssl
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from tests.component.agent._pair import (
    SECRET,
    SRC,
    TGT,
    LoneTargetRole,
    peer_server,
    source_mapping,
    target_folder,
)

from relaysync.agent.peer_server import MAC_FAILURES_WARNED, PeerServer, RefusalLookup
from relaysync.agent.source import SourceMapping
from relaysync.errors import FolderRefused, PeerRefused
from relaysync.protocol.messages import ErrorCode, MappingSpec, RouteHop, TargetSpec
from relaysync.transfer import _stale_routes, ops
from relaysync.transfer.link_ends import TargetAddress
from relaysync.transfer.sender import TargetLink
from relaysync.transfer.target_folder import TargetFolder
from relaysync.watch._fsevent import FsEvent

RELAY = "c" * 64  # t1 of the route src>t1>t2; TGT is t2
RELAY_SECRET = b"r" * 32  # the secret of the hop t1>t2 (SECRET is the hop src>t2's)
OLD_EPOCH, NEW_EPOCH = 1_000, 2_000
AUTH_FAILED = "failed plain-link authentication"
WAIT_S = 30.0  # generous: the refusals and the retry are on loopback, but the machine is shared


def _route_src_to_t2(folder: TargetFolder) -> TargetFolder:
    """t2 as it runs the old table: fed by the source, which holds the secret of that hop."""
    folder.parents = frozenset({SRC})
    folder.members = frozenset({SRC, RELAY, TGT})
    folder.route_epoch = OLD_EPOCH
    return folder


def _route_src_t1_t2(folder: TargetFolder) -> TargetFolder:
    """t2 as it runs the new table src>t1>t2: fed by t1, with the secret of that hop."""
    folder.parents = frozenset({RELAY})
    folder.route_epoch = NEW_EPOCH
    folder.link_secret = RELAY_SECRET
    return folder


def _server(
    folder: TargetFolder | None,
    cls: type[PeerServer] = PeerServer,
    refusals: RefusalLookup | None = None,
) -> PeerServer:
    return peer_server(folder, name="t2", cls=cls, refusals=refusals)


def _link(
    source: SourceMapping, port: int, *, sender: str, secret: bytes, epoch: int, **kw: Any
) -> TargetLink:
    return TargetLink(
        source,
        TargetAddress(node_id=TGT, name="t2", resolve=lambda: f"127.0.0.1:{port}"),
        ssl.create_default_context(),
        node_id=sender,
        name="t1" if sender == RELAY else "src",
        options=ops.SendOptions(tls=False, link_secret=secret),
        route_epoch=lambda: epoch,
        **kw,
    )


async def _refusal(link: TargetLink) -> PeerRefused:
    """Open one session, which the target must refuse; the refusal as the sender sees it."""
    with pytest.raises(PeerRefused) as refused:
        await link._open()
    return refused.value


def _refused(
    folder: TargetFolder | None,
    tmp: Path,
    times: int = 1,
    refusals: RefusalLookup | None = None,
    **link: Any,
) -> list[PeerRefused]:
    """Open `times` sessions one after the other, each of which the target must refuse."""

    async def main() -> list[PeerRefused]:
        async with anyio.create_task_group() as tg:
            port = await tg.start(_server(folder, refusals=refusals).serve)
            sender = _link(source_mapping(tmp), port, **link)
            with anyio.fail_after(WAIT_S):
                refused = [await _refusal(sender) for _ in range(times)]
            tg.cancel_scope.cancel()
            return refused

    return anyio.run(main)


def _refused_once(folder: TargetFolder | None, tmp: Path, **link: Any) -> PeerRefused:
    return _refused(folder, tmp, **link)[0]


def _code(refusal: PeerRefused) -> str:
    return str(refusal.args[1])


@pytest.fixture(autouse=True)
def _logs(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="relaysync")


def test_a_relay_of_the_new_table_calling_before_the_target_has_it_hears_routes_stale(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """t1 runs src>t1>t2 and calls t2, which still runs src>t2: no authentication failure."""
    folder = _route_src_to_t2(target_folder(tmp_path))
    refusal = _refused_once(folder, tmp_path, sender=RELAY, secret=RELAY_SECRET, epoch=NEW_EPOCH)
    assert _code(refusal) == ErrorCode.ROUTES_STALE.name, refusal
    assert AUTH_FAILED not in caplog.text


def test_a_sender_calling_for_a_mapping_not_ours_yet_hears_routes_stale(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The sender's table has the mapping reach t2; t2's assignment has not opened it yet."""
    refusal = _refused_once(None, tmp_path, sender=RELAY, secret=RELAY_SECRET, epoch=NEW_EPOCH)
    assert _code(refusal) == ErrorCode.ROUTES_STALE.name, refusal
    assert AUTH_FAILED not in caplog.text


def test_a_parent_holding_the_secret_of_the_other_table_hears_routes_stale(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """t2 still names the source its parent, but already holds the new hop's secret (a newer
    table that keeps the parent and moved the secret); the source, in the older table, proves
    the old one: a route change in flight, refused, and no authentication failure logged."""
    folder = _route_src_to_t2(target_folder(tmp_path))
    folder.link_secret, folder.route_epoch = RELAY_SECRET, NEW_EPOCH
    refusal = _refused_once(folder, tmp_path, sender=SRC, secret=SECRET, epoch=OLD_EPOCH)
    assert _code(refusal) == ErrorCode.ROUTES_STALE.name, refusal
    assert AUTH_FAILED not in caplog.text


def test_a_plain_link_to_a_target_that_refused_the_folder_hears_that_refusal(
    tmp_path: Path,
) -> None:
    """Found in review: the stale-route check came first on a plain link, so a target whose
    guard refused the folder answered ROUTES_STALE, which the sender retries quietly: the master
    never heard of the refused hop (on TLS links the refusal was checked first)."""
    refusal = FolderRefused("target", "/t2", 1, "outside the allowed roots")
    refused = _refused(
        None,
        tmp_path,
        refusals=lambda m: (refusal, frozenset({RELAY})) if m == 1 else None,
        sender=RELAY,
        secret=RELAY_SECRET,
        epoch=NEW_EPOCH,
    )
    assert _code(refused[0]) == ErrorCode.UNKNOWN_MAPPING.name, refused
    assert "outside the allowed roots" in str(refused[0])


def test_a_mac_of_another_table_failing_again_and_again_becomes_an_authentication_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Found in review: anyone claiming a parent's (public) node id with any other epoch got a
    quiet ROUTES_STALE for every wrong MAC, naming our epoch. A route change settles in
    seconds: past MAC_FAILURES_WARNED in a row it is an authentication failure, logged."""
    folder = _route_src_to_t2(target_folder(tmp_path))
    folder.link_secret, folder.route_epoch = RELAY_SECRET, NEW_EPOCH
    refused = _refused(
        folder, tmp_path, times=MAC_FAILURES_WARNED, sender=SRC, secret=b"x" * 32, epoch=OLD_EPOCH
    )
    codes = [_code(r) for r in refused]
    assert codes == [ErrorCode.ROUTES_STALE.name] * (MAC_FAILURES_WARNED - 1) + [
        ErrorCode.UNKNOWN_PEER.name
    ]
    assert all(str(NEW_EPOCH) not in str(r) for r in refused)  # ours is not told
    assert AUTH_FAILED in caplog.text


def test_refusals_of_a_route_change_that_never_settles_become_a_failed_hop(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: a target that never gets the mapping (its assignment lost) answered
    ROUTES_STALE for ever and the sender retried quietly for ever; past ROUTES_STALE_LIMIT_S
    the master hears of the failed hop and re-plans."""
    monkeypatch.setattr(_stale_routes, "ROUTES_STALE_LIMIT_S", 0.5)
    reported: list[str] = []

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(_server(None).serve)
            link = _link(
                source_mapping(tmp_path),
                port,
                sender=RELAY,
                secret=RELAY_SECRET,
                epoch=NEW_EPOCH,
                on_failure=lambda node, err, count: reported.append(err),
            )
            tg.start_soon(link.serve)
            with anyio.fail_after(WAIT_S):
                while not reported:
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert "ROUTES_STALE" in reported[0] or "routing epoch" in reported[0], reported


def test_a_wrong_secret_under_the_same_table_is_still_an_authentication_failure(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = _route_src_to_t2(target_folder(tmp_path))
    refusal = _refused_once(folder, tmp_path, sender=SRC, secret=b"x" * 32, epoch=OLD_EPOCH)
    assert _code(refusal) == ErrorCode.UNKNOWN_PEER.name, refusal
    assert AUTH_FAILED in caplog.text


def test_the_relay_retries_quietly_and_gets_through_once_the_target_runs_the_new_table(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """t1's link is refused until t2 runs the new table: it reports no failed hop to the
    master, counts no failure, logs no 'link down' warning, and streams once t2 is there."""
    folder = _route_src_to_t2(target_folder(tmp_path))
    source = source_mapping(tmp_path)
    (source.root / "f").write_text("relayed")
    earlier = time.time_ns() - 10 * 10**9
    os.utime(source.root / "f", ns=(earlier, earlier))  # not a file still being written
    reported: list[str] = []

    async def main() -> None:
        await source._record([FsEvent(kind="rescan", path="")])
        async with anyio.create_task_group() as tg:
            server = _server(folder)
            port = await tg.start(server.serve)
            link = _link(
                source,
                port,
                sender=RELAY,
                secret=RELAY_SECRET,
                epoch=NEW_EPOCH,
                on_failure=lambda node, err, count: reported.append(err),
            )
            tg.start_soon(link.serve)
            with anyio.fail_after(WAIT_S):  # refused (and retried) a few times first
                while server.refused < 3:
                    await anyio.sleep(0.02)
            _route_src_t1_t2(folder)  # t2's assignment arrives
            with anyio.fail_after(WAIT_S):
                while not (folder.root / "f").exists():
                    await anyio.sleep(0.02)
            assert (link.failures, reported) == (0, [])
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert (folder.root / "f").read_text() == "relayed"
    assert AUTH_FAILED not in caplog.text
    assert "link to t2 down" not in caplog.text, caplog.text[-2000:]


class _RacingServer(PeerServer):
    """t2's peer server, where the old parent reconnects at the worst moment: while t2 applies
    the new table, between its ending the old session and its serving the new parent."""

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.old_parent: TargetLink | None = None
        self.raced: list[PeerRefused] = []

    async def restart_session(self, mapping_id: int, reason: str = "") -> None:
        assert self.old_parent is not None
        self.raced.append(await _refusal(self.old_parent))
        await super().restart_session(mapping_id, reason)


def _new_table_spec(folder: TargetFolder) -> MappingSpec:
    return MappingSpec(
        mapping_id=1,
        name="m",
        source_node=SRC,
        source_path="/src",
        targets=(
            TargetSpec(node_id=RELAY, path="/t1"),
            TargetSpec(node_id=TGT, path=str(folder.root), link_secret=RELAY_SECRET),
        ),
        durability="fast",
        routes=(RouteHop(parent=SRC, child=RELAY), RouteHop(parent=RELAY, child=TGT)),
        route_epoch=NEW_EPOCH,
    )


def test_the_old_parent_reconnecting_while_the_target_applies_the_new_table_hears_routes_stale(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """t2 gets src>t1>t2: the hop's secret changes, so it restarts the source's session, and
    the source reconnects at once, before t2 is done. It met the new secret under the old
    parents and epoch, and t2 logged an authentication failure (the CI failure of 1102dd7)."""
    folder = _route_src_to_t2(target_folder(tmp_path))

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            server = _server(folder, _RacingServer)
            assert isinstance(server, _RacingServer)
            port = await tg.start(server.serve)
            server.old_parent = _link(
                source_mapping(tmp_path), port, sender=SRC, secret=SECRET, epoch=OLD_EPOCH
            )
            with anyio.fail_after(WAIT_S):
                await LoneTargetRole(folder, server, (SRC, RELAY))._apply_target(
                    1, _new_table_spec(folder)
                )
            tg.cancel_scope.cancel()
        assert [_code(r) for r in server.raced] == [ErrorCode.ROUTES_STALE.name]

    anyio.run(main)
    assert (folder.parents, folder.link_secret) == ({RELAY}, RELAY_SECRET)
    assert AUTH_FAILED not in caplog.text
