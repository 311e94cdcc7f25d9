"""A link's comparison with its target waits for the source's first scan to end: until then the
scan's records reach the target anyway, and a comparison would hash a manifest still being built
(about 0.1 CPU-s on each side per 10,000 files, in the middle of the first sync)."""

from __future__ import annotations

import os
import ssl
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from tests.component.agent._pair import (
    SECRET,
    TGT,
    peer_server,
    source_mapping,
    target_folder,
    watched_waits,
)

from relaysync.agent import source as source_module
from relaysync.agent.source import SourceMapping
from relaysync.transfer import ops
from relaysync.transfer.link_ends import TargetAddress
from relaysync.transfer.sender import TargetLink
from relaysync.watch._fsevent import FsEvent


class _CountingLink(TargetLink):
    compares = 0

    async def _catch_up_by_compare(self, session: object) -> None:  # type: ignore[override]
        self.compares += 1
        await super()._catch_up_by_compare(session)  # type: ignore[arg-type]


def _counting_link(source: SourceMapping, port: int) -> _CountingLink:
    """The source's plain link to the peer server on 127.0.0.1:`port`, counting comparisons."""
    return _CountingLink(
        source,
        TargetAddress(node_id=TGT, name="t", resolve=lambda: f"127.0.0.1:{port}"),
        ssl.create_default_context(),
        node_id="a" * 64,
        name="s",
        options=ops.SendOptions(tls=False, link_secret=SECRET),
    )


def _held_records(source: SourceMapping) -> anyio.Event:
    """Hold the source's journaling (its scan's records) until the event returned is set."""
    gate = anyio.Event()
    record = source._record

    async def held(events: list[FsEvent], **kwargs: Any) -> None:
        await gate.wait()
        await record(events, **kwargs)

    source._record = held  # type: ignore[method-assign]
    return gate


def _files(source: SourceMapping, names: list[str]) -> None:
    earlier = time.time_ns() - 10 * 10**9  # not files being written
    for name in names:
        path = source.root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(name)
        os.utime(path, ns=(earlier, earlier))


def test_a_link_compares_only_once_the_first_scan_ended(tmp_path: Path) -> None:
    source = source_mapping(tmp_path)
    _files(source, ["a/1.txt", "a/2.txt", "b/3.txt"])
    folder = target_folder(tmp_path)
    waits = watched_waits(source)  # after_seq of each wait of the link for new records

    async def main() -> None:
        source.scanning = True  # as `SourceMapping.serve` sets it for a first scan
        await source._record([FsEvent(kind="rescan", path="a")])  # the first top-level entry
        async with anyio.create_task_group() as tg:
            port = await tg.start(peer_server(folder).serve)
            link = _counting_link(source, port)
            tg.start_soon(link.serve)
            last = source.journal.last_seq
            with anyio.fail_after(20):  # acknowledged, and the link idle at the journal's end
                while source._acks.get(TGT, -1) < last or waits[-1:] != [last]:
                    await anyio.sleep(0.02)
            assert link.compares == 0, "compared with the target while the first scan ran"
            await source._record([FsEvent(kind="rescan", path="b")])
            await source._final_scan()  # the scan's end: the closing rescan
            assert not source.scanning
            with anyio.fail_after(20):
                while link.compares == 0:
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert (folder.root / "b" / "3.txt").read_text() == "b/3.txt"


def test_links_start_as_a_first_sync_begins_and_wait_for_its_records(tmp_path: Path) -> None:
    """A first sync's links start before its first top-level entry is scanned (`links_may_start`):
    they connect meanwhile (TLS, the target's state: 10-30 ms of a 10k copy's start) and wait
    for its records, with no comparison until the scan ended."""
    source = source_mapping(tmp_path)
    _files(source, ["a/1.txt", "b/2.txt"])
    folder = target_folder(tmp_path)
    gate = _held_records(source)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(peer_server(folder).serve)
            tg.start_soon(source.serve)
            with anyio.fail_after(20):
                await source.links_may_start.wait()
            assert source.scanning and not source.ready.is_set()
            link = _counting_link(source, port)
            tg.start_soon(link.serve)
            with anyio.fail_after(20):
                while not link.connected:
                    await anyio.sleep(0.01)
            assert source.journal.last_seq == 0 and link.compares == 0
            gate.set()
            with anyio.fail_after(20):
                await source.ready.wait()
                while source.scanning or link.compares == 0:  # compared once the scan ended
                    assert link.compares == 0 or not source.scanning
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert (folder.root / "a" / "1.txt").read_text() == "a/1.txt"
    assert (folder.root / "b" / "2.txt").read_text() == "b/2.txt"


def test_a_held_first_sync_starts_its_links_once_its_whole_scan_is_journaled(
    tmp_path: Path,
) -> None:
    """A manual/reserved first sync's links start once its whole scan is journaled: the agent
    applies a release made while the source was down as they start, and it must cover the folder
    (with links started at the first top-level entry it covered that entry only, the rest held
    until the next send; started before the scan, nothing at all)."""
    source = source_mapping(tmp_path, mode="manual")
    _files(source, ["a/1.txt", "b/2.txt", "c/3.txt"])

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(source.serve)
            with anyio.fail_after(20):
                await source.links_may_start.wait()
            assert source.ready.is_set()
            assert source.set_release(1)  # as SourceRole._release does then
            assert source.send_upto == source.journal.last_seq == 6  # a, b, c and their files
            tg.cancel_scope.cancel()

    anyio.run(main)


def test_an_owed_comparison_waits_for_the_first_scan_to_end(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A first sync (empty manifest) whose journal cannot replay what the target holds (fast
    durability, the machine crashed: the journal starts afresh) owes the target a comparison.
    It waited for nothing: run against a manifest not yet holding the folder, it erased the
    target's copy, then sent it again. It now waits for the scan's end, as a periodic one does;
    and the closing rescan does not wait for acks of a link owed a comparison, which sends none
    until it ran (it waited FINAL_SCAN_WAIT_S, 10 s: 600 s here, past the test's bound)."""
    monkeypatch.setattr(source_module, "FINAL_SCAN_WAIT_S", 600.0)
    first = source_mapping(tmp_path)
    _files(first, ["a/1.txt", "b/2.txt"])
    folder = target_folder(tmp_path)

    async def copy() -> None:
        await first._record([FsEvent(kind="rescan", path="")])
        async with anyio.create_task_group() as tg:
            port = await tg.start(peer_server(folder).serve)
            tg.start_soon(_counting_link(first, port).serve)
            with anyio.fail_after(20):
                while first._acks.get(TGT, -1) < first.journal.last_seq:
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()

    anyio.run(copy)
    first.close()
    folder.manifest.close()
    for db in (tmp_path / "state").glob("manifest.db*"):
        db.unlink()  # the manifest lost with the crash: a first sync again
    (tmp_path / "state" / "journal" / "boot").write_text("deadbeef open fast\n")  # another boot
    folder = target_folder(tmp_path)
    source = source_mapping(tmp_path)
    assert not source.journal.covers(source.journal.last_seq - 1)  # the target is owed
    gate = _held_records(source)
    waits = watched_waits(source)  # each wait for records: it decided not to compare first

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(peer_server(folder).serve)
            tg.start_soon(source.serve)
            with anyio.fail_after(20):
                await source.links_may_start.wait()
            link = _counting_link(source, port)
            tg.start_soon(link.serve)
            with anyio.fail_after(20):
                while not waits:
                    await anyio.sleep(0.01)
            assert link.connected and link.compares == 0
            assert sorted(p.name for p in folder.root.rglob("*.txt")) == ["1.txt", "2.txt"]
            gate.set()
            with anyio.fail_after(20):
                while link.compares == 0:
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert (folder.root / "a" / "1.txt").read_text() == "a/1.txt"
    assert (folder.root / "b" / "2.txt").read_text() == "b/2.txt"
