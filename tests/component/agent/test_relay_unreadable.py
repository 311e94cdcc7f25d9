"""A relay and the source's paths there but unreadable (source -> relay -> child, real sockets,
plain links, in-process agents' parts).

1. The relay's comparison with its child keeps what the source cannot read now, as the source's
   own comparison does: the relay learns those paths from its parent (SourceUnreadable), keeps
   them on disk across a restart, and tells its own children.
2. A file the source read again once readable (sent under the seq it was journaled with) is
   forwarded to the child at once, not at the relay's next periodic comparison.
3. A file the source's comparison sends the relay as catch-up work reaches a child that was
   caught up to the comparison's checkpoint already (the spool does not cover it there).

The errno (EACCES) is injected at the scan's opens and at the link's open, as in
test_unreadable_compare.py and test_unreadable_source.py.
"""

from __future__ import annotations

import errno
import os
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup
from tests.component.agent._pair import SECRET, SRC, TGT, peer_server, plain_link
from tests.component.agent._pair import source_mapping as _source_mapping
from tests.component.agent.test_unreadable_compare import _lock
from tests.component.agent.test_unreadable_source import _locked, _record

from relaysync.agent.peer_server import PeerServer
from relaysync.agent.source import SourceMapping
from relaysync.constants import CAP_UNREADABLE, CAPABILITIES, PERIODIC_COMPARE_S
from relaysync.protocol.messages import RouteHop, SourceUnreadable
from relaysync.transfer import ops, sender, unreadable
from relaysync.transfer.compare import Unreadable
from relaysync.transfer.link_ends import TargetAddress
from relaysync.transfer.relay import RelayFeed, RelayLink
from relaysync.transfer.sender import TargetLink, _Session
from relaysync.transfer.spool import Spool
from relaysync.transfer.target_folder import TargetFolder
from relaysync.watch._fsevent import FsEvent
from relaysync.watch.filters import PathFilter
from relaysync.watch.manifest import Manifest
from relaysync.watch.recorder import ChangeRecorder

BOUND_S = 30.0  # every wait below polls for its condition under this bound
CHILD = "c" * 64
SEEDED = ("d/f1", "d/f2", "top.txt", "locked.txt", "other.txt")
LOST_BY_OLD_CODE = ("d/f1", "d/f2", "locked.txt")


class _CountingRelayLink(RelayLink):
    compares = 0  # comparisons whose work the child has applied

    async def _catch_up_by_compare(self, session: _Session) -> None:
        await super()._catch_up_by_compare(session)
        # The child answers a listing request after it applied all that came before it.
        await session.request_listings([""], True, "")
        self.compares += 1


def _folder(tmp: Path, name: str, parent: str) -> TargetFolder:
    (tmp / name).mkdir(exist_ok=True)
    return TargetFolder(
        mapping_id=1,
        source_node=SRC,
        root=tmp / name,
        manifest=Manifest(tmp / f"{name}.db"),
        durable=False,
        link_secret=SECRET,
        parents=frozenset({parent}),
    )


def _feed(tmp: Path, folder: TargetFolder) -> RelayFeed:
    feed = RelayFeed(folder, Spool(tmp / "spool"))
    feed.children = frozenset({CHILD})
    feed.routes = (RouteHop(parent=SRC, child=TGT), RouteHop(parent=TGT, child=CHILD))
    return feed


def _relay_server(folder: TargetFolder, feed: RelayFeed) -> PeerServer:
    return PeerServer(
        host="127.0.0.1",
        port=0,
        ctx=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER),
        node_id=TGT,
        name="r",
        folders=lambda m: folder if m == 1 else None,
        reporter=lambda f, j: lambda w, recs: None,
        relays=lambda m: feed if m == 1 else None,
    )


def _child_server(folder: TargetFolder) -> PeerServer:
    server = peer_server(folder, name="c")
    server.node_id = CHILD
    return server


def _relay_link(feed: RelayFeed, port: int, compare_interval_s: float) -> _CountingRelayLink:
    return _CountingRelayLink(
        feed,
        TargetAddress(node_id=CHILD, name="c", resolve=lambda: f"127.0.0.1:{port}"),
        ssl.create_default_context(),
        node_id=TGT,
        name="r",
        compare_interval_s=compare_interval_s,
        options=ops.SendOptions(tls=False, link_secret=SECRET),
    )


def _seed(tmp: Path) -> tuple[SourceMapping, TargetFolder]:
    """The same files on the source and the child (its manifest holding them: pre-seeded)."""
    source, child = _source_mapping(tmp), _folder(tmp, "child", TGT)
    earlier = time.time_ns() - 60 * 10**9  # not held back as hot by the scan
    for base in (source.root, child.root):
        (base / "d").mkdir()
        for rel in SEEDED:
            (base / rel).write_text(f"same {rel}")
            os.utime(base / rel, ns=(earlier, earlier))
    recorder = ChangeRecorder(child.root, child.manifest, PathFilter(), hard_links=False)
    recorder.detect_and_apply([FsEvent(kind="rescan", path="")])
    return source, child


def _no_deferral(monkeypatch: pytest.MonkeyPatch) -> None:
    """Comparisons send a kept file as catch-up work (seq 0), as these tests need: one that met
    it while it was kept would leave it to its retry and make that due at once
    (`UnreadableFiles.defer`), whose read, racing the test's unlock, sent it under its record's
    seq and reset no spool (a CI run waited 30 s for the reset)."""
    monkeypatch.setattr(
        unreadable.UnreadableFiles, "defer", lambda self, path, expected_hash: False
    )


async def _until(done: Callable[[], bool]) -> None:
    with anyio.fail_after(BOUND_S):
        while not done():
            await anyio.sleep(0.02)


async def _kept_under_its_record(link: TargetLink, source: SourceMapping, name: str) -> None:
    """Wait until `name`, just journaled while unreadable, is kept under its record's seq: a
    comparison may have met it first and kept it as catch-up work (seq 0); the record's own
    read, coming after the test made it readable, would then send it under its seq and reset no
    spool (a CI run waited 30 s for the reset)."""
    seq = source.journal.last_seq

    def kept() -> bool:
        file = link.unreadable.kept(name)
        return file is not None and file.seq == seq

    await _until(kept)


def _relay_compares(
    source: SourceMapping | None,
    relay: TargetFolder,
    feed: RelayFeed,
    child: TargetFolder,
    link_cls: type[TargetLink] = TargetLink,
) -> None:
    """Run the chain (no source: the relay alone, as after a restart with its parent down) until
    the child applied a comparison of the relay's, its Erase included."""

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            if source is not None:
                relay_port = await tg.start(_relay_server(relay, feed).serve)
                tg.start_soon(plain_link(source, relay_port, cls=link_cls).serve)
                await _until(lambda: (relay.root / "top.txt").exists())  # the relay is synced
            child_port = await tg.start(_child_server(child).serve)
            link = _relay_link(feed, child_port, compare_interval_s=0.2)
            tg.start_soon(link.serve)
            await _until(lambda: link.compares >= 1)
            tg.cancel_scope.cancel()

    anyio.run(main)


def test_a_relays_comparison_keeps_what_the_source_cannot_read_even_after_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the fix the relay knew nothing of the source's unreadable paths: its comparison
    sent the child Erase('', keep=[other.txt, top.txt]), and d/f1, d/f2 and locked.txt, still on
    the source, were deleted on the child."""
    source, child = _seed(tmp_path)
    relay = _folder(tmp_path, "relay", SRC)
    _lock(monkeypatch, dirs={"d"}, files={"locked.txt"})
    try:
        anyio.run(source._record, [FsEvent(kind="rescan", path="")])
        assert "d" in source.unreadable and "locked.txt" in source.unreadable
        _relay_compares(source, relay, _feed(tmp_path, relay), child)
    finally:
        source.close()
    assert not (relay.root / "locked.txt").exists()  # the relay was synced while it was locked
    for rel in SEEDED:
        assert (child.root / rel).read_text() == f"same {rel}", rel

    # The relay restarts with its parent down: it keeps what it was told (on disk).
    feed = _feed(tmp_path, relay)
    assert feed.unreadable_now().files == {"locked.txt"} and feed.unreadable_now().dirs == {"d"}
    (child.root / "extra.txt").write_text("only the child has it")  # the comparison sends
    recorder = ChangeRecorder(child.root, child.manifest, PathFilter(), hard_links=False)
    recorder.detect_and_apply([FsEvent(kind="rescan", path="")])
    _relay_compares(None, relay, feed, child)
    assert not (child.root / "extra.txt").exists()  # ...an Erase, which keeps the others
    for rel in LOST_BY_OLD_CODE:
        assert (child.root / rel).read_text() == f"same {rel}", rel


def test_a_relay_forgets_a_path_once_the_source_can_read_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Readable again (the lock lifted, the source's re-check journals the file): the source
    tells the relay after it sent the file, the relay and the child hold it, and the relay keeps
    nothing of it (so a delete of it later goes by comparison too)."""
    source, child = _seed(tmp_path)
    relay = _folder(tmp_path, "relay", SRC)
    locked = {"locked.txt"}
    _lock(monkeypatch, dirs=set(), files=locked)
    feed = _feed(tmp_path, relay)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(source.unreadable.serve, source._record)
            relay_port = await tg.start(_relay_server(relay, feed).serve)
            tg.start_soon(plain_link(source, relay_port).serve)
            child_port = await tg.start(_child_server(child).serve)
            tg.start_soon(_relay_link(feed, child_port, compare_interval_s=0.2).serve)
            await _until(lambda: "locked.txt" in feed.unreadable_now().files)
            locked.clear()
            await _until(
                lambda: (relay.root / "locked.txt").exists() and not feed.unreadable_now().files
            )
            tg.cancel_scope.cancel()

    try:
        anyio.run(source._record, [FsEvent(kind="rescan", path="")])
        anyio.run(main)
    finally:
        source.close()
    assert (child.root / "locked.txt").read_text() == "same locked.txt"
    assert not _feed(tmp_path, relay).unreadable_now().files  # on disk too


@dataclass
class _Chain:
    """source -> relay -> child, in-process parts over real sockets."""

    source: SourceMapping
    relay: TargetFolder
    child: TargetFolder
    feed: RelayFeed


def _chain(tmp: Path) -> _Chain:
    relay = _folder(tmp, "relay", SRC)
    return _Chain(_source_mapping(tmp), relay, _folder(tmp, "child", TGT), _feed(tmp, relay))


async def _start_source(tg: TaskGroup, chain: _Chain, compare_s: float) -> TargetLink:
    """The relay's peer server and the source's link to it (comparing every `compare_s`)."""
    relay_port = await tg.start(_relay_server(chain.relay, chain.feed).serve)
    link = plain_link(chain.source, relay_port, compare_interval_s=compare_s)
    tg.start_soon(link.serve)
    return link


async def _start_child(tg: TaskGroup, chain: _Chain) -> None:
    """The child's peer server and the relay's link to it (its periodic comparison 600 s on)."""
    child_port = await tg.start(_child_server(chain.child).serve)
    tg.start_soon(_relay_link(chain.feed, child_port, compare_interval_s=600.0).serve)


async def _keep_late_then_b(chain: _Chain, link: TargetLink, locked: set[str], text: str) -> int:
    """a.txt reaches the child; late.txt (`text`) is journaled while unreadable and kept to read
    again; b.txt is journaled after it. Returns b.txt's seq."""
    root = chain.source.root
    (root / "a.txt").write_text("first")
    await _record(chain.source, "a.txt")
    await _until(lambda: (chain.child.root / "a.txt").exists())
    (root / "late.txt").write_text(text)
    locked.add("late.txt")
    await _record(chain.source, "late.txt")
    await _kept_under_its_record(link, chain.source, "late.txt")
    (root / "b.txt").write_text("after it")
    await _record(chain.source, "b.txt")
    return chain.source.journal.last_seq


def test_a_file_the_source_read_again_reaches_the_relays_child_at_once(tmp_path: Path) -> None:
    """Before the fix the relay skipped it (its seq was below the child's watermark): the child
    got it only at the relay's next comparison, 10 min on (600 s here too)."""
    chain = _chain(tmp_path)
    source, relay, child = chain.source, chain.relay, chain.child
    locked: set[str] = set()
    text = "journaled readable, sent once readable again"

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            link = await _start_source(tg, chain, PERIODIC_COMPARE_S)
            await _start_child(tg, chain)
            await _keep_late_then_b(chain, link, locked, text)
            await _until(lambda: (child.root / "b.txt").exists())
            assert not (child.root / "late.txt").exists()
            locked.clear()  # the link reads it again after UNREADABLE_RETRY_MIN_S
            await _until(lambda: (relay.root / "late.txt").exists())
            await _until(lambda: (child.root / "late.txt").exists())
            tg.cancel_scope.cancel()

    try:
        with _locked(locked, errno.EACCES):
            anyio.run(main)
    finally:
        source.close()
    assert (child.root / "late.txt").read_text() == text


def _rescan(folder: TargetFolder) -> None:
    recorder = ChangeRecorder(folder.root, folder.manifest, PathFilter(), hard_links=False)
    recorder.detect_and_apply([FsEvent(kind="rescan", path="")])


def test_a_failed_save_then_a_restart_erases_nothing_the_source_cannot_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the fix the older unreadable.json stayed (here: none, the first save failed) and
    was read after the restart as all there is: d/f1, d/f2 and locked.txt, still on the
    source, were erased on the child."""
    source, child = _seed(tmp_path)
    relay = _folder(tmp_path, "relay", SRC)
    feed = _feed(tmp_path, relay)
    (feed.spool.directory / "unreadable.tmp").mkdir()  # the save fails (ENOSPC, EIO ...)
    _lock(monkeypatch, dirs={"d"}, files={"locked.txt"})
    try:
        anyio.run(source._record, [FsEvent(kind="rescan", path="")])
        _relay_compares(source, relay, feed, child)
    finally:
        source.close()
    assert feed.unreadable_now().files == {"locked.txt"}  # in memory: right
    feed = _feed(tmp_path, relay)  # the relay restarts, its parent down
    (child.root / "extra.txt").write_text("only the child has it")
    _rescan(child)
    _relay_compares(None, relay, feed, child)
    for rel in SEEDED:
        assert (child.root / rel).read_text() == f"same {rel}", rel
    assert not feed.unreadable_now().complete  # unknown: it erased nothing (extra.txt too)
    assert (child.root / "extra.txt").exists()


class _OlderLink(TargetLink):
    """A parent of the release before SourceUnreadable: it tells nothing."""

    async def _tell_unreadable(self, session: _Session) -> None:
        return


def test_under_an_older_parent_a_relay_keeps_no_old_word(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the fix the word a parent of this release gave stayed in force for ever under an
    older one: gone.txt, deleted on the source, stayed on the child."""
    source, child = _seed(tmp_path)
    relay = _folder(tmp_path, "relay", SRC)
    feed = _feed(tmp_path, relay)
    feed.unreadable.learn(SourceUnreadable(files=("gone.txt",)))  # told once, by a newer parent
    (child.root / "gone.txt").write_text("deleted on the source since")
    _rescan(child)
    real_hello = sender.client_hello

    async def older_hello(framed: Any, **kw: Any) -> Any:
        kw["capabilities"] = tuple(c for c in CAPABILITIES if c != CAP_UNREADABLE)
        return await real_hello(framed, **kw)

    monkeypatch.setattr(sender, "client_hello", older_hello)
    try:
        anyio.run(source._record, [FsEvent(kind="rescan", path="")])
        _relay_compares(source, relay, feed, child, _OlderLink)
    finally:
        source.close()
    assert not (child.root / "gone.txt").exists()
    for rel in SEEDED:
        assert (child.root / rel).read_text() == f"same {rel}", rel
    assert feed.unreadable_now() == Unreadable()  # on disk too
    assert _feed(tmp_path, relay).unreadable_now() == Unreadable()


def test_catch_up_work_reaches_a_relays_child_already_at_its_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The source's comparison sends the relay a file as catch-up work (seq 0: here one its link
    forgot to read again, as an agent restart forgets). The relay's spool restarts at the
    comparison's closing checkpoint, which the child had reached already. Before the fix the
    child counted as covered by the spool and got no comparison: it lacked the file until the
    relay's periodic one, 10 minutes on (found in review: still missing after 30 s)."""
    monkeypatch.setattr(unreadable, "UNREADABLE_RETRY_MIN_S", 3600.0)  # no retry: only the
    monkeypatch.setattr(unreadable, "UNREADABLE_RETRY_MAX_S", 3600.0)  # comparison sends it
    _no_deferral(monkeypatch)
    chain = _chain(tmp_path)
    source, relay, child, feed = chain.source, chain.relay, chain.child, chain.feed
    locked: set[str] = set()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            link = await _start_source(tg, chain, 0.2)
            await _start_child(tg, chain)
            b_seq = await _keep_late_then_b(chain, link, locked, "late content")
            await _until(lambda: feed.marks.get(CHILD, -1) >= b_seq)  # the child is caught up
            generation = feed.spool.generation
            locked.clear()  # first: a read between the two would keep it for an hour
            link.unreadable.forget("late.txt")
            await _until(lambda: (relay.root / "late.txt").exists())
            assert feed.spool.generation > generation  # the catch-up work reset the spool
            await _until(lambda: (child.root / "late.txt").exists())
            tg.cancel_scope.cancel()

    try:
        with _locked(locked, errno.EACCES):
            anyio.run(main)
    finally:
        source.close()
    assert (child.root / "late.txt").read_text() == "late content"


def test_catch_up_work_during_a_childs_first_comparison_reaches_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Found in review: a child's first comparison with the relay ran (its listing taken) and
    the relay's parent then sent catch-up work, resetting the spool. The child's stream began
    with the new spool's generation, so no reset was noticed: it lacked the file (and any
    change between the two checkpoints) until the relay's periodic comparison, 10 min on."""
    monkeypatch.setattr(unreadable, "UNREADABLE_RETRY_MIN_S", 3600.0)
    monkeypatch.setattr(unreadable, "UNREADABLE_RETRY_MAX_S", 3600.0)
    _no_deferral(monkeypatch)
    compared, reset_done = anyio.Event(), anyio.Event()
    real_compare = RelayLink._catch_up_by_compare

    async def compare_then_hold(link: RelayLink, session: _Session) -> None:
        await real_compare(link, session)
        if not compared.is_set():  # the first one: hold it until the reset came
            compared.set()
            await reset_done.wait()

    monkeypatch.setattr(RelayLink, "_catch_up_by_compare", compare_then_hold)
    chain = _chain(tmp_path)
    source, child, feed = chain.source, chain.child, chain.feed
    root = source.root
    locked: set[str] = set()

    async def forgotten(link: TargetLink, name: str) -> None:
        """`name` journaled while unreadable, then readable and forgotten: the source's next
        comparison sends it as catch-up work, which resets the relay's spool."""
        (root / name).write_text(f"content of {name}")
        locked.add(name)
        await _record(source, name)
        await _kept_under_its_record(link, source, name)
        generation = feed.spool.generation
        locked.clear()
        link.unreadable.forget(name)
        await _until(lambda: feed.spool.generation > generation and feed.spool.base is not None)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            link = await _start_source(tg, chain, 0.2)
            await forgotten(link, "first.txt")  # the child (at 0) is now behind the base
            await _start_child(tg, chain)
            with anyio.fail_after(BOUND_S):
                await compared.wait()
            await forgotten(link, "second.txt")
            reset_done.set()
            await _until(lambda: (child.root / "second.txt").exists())
            tg.cancel_scope.cancel()

    try:
        with _locked(locked, errno.EACCES):
            anyio.run(main)
    finally:
        source.close()
    assert (child.root / "first.txt").read_text() == "content of first.txt"
