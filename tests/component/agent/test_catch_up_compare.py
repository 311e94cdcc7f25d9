"""When a link catches a target up by comparison (over a real socket: SourceMapping, PeerServer,
TargetFolder, TargetLink): a held mapping's comparison sends nothing unreleased, a comparison
never jumps journaled records it has not sent, and a replay that finds its records released
meanwhile compares instead of skipping them."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import anyio.from_thread
from tests.component.agent._pair import (
    TGT,
    peer_server,
    plain_link,
    source_mapping,
    target_folder,
    watched_waits,
)
from tests.component.agent.test_link_lifecycle import _source_in

from relaysync.agent.source import SourceMapping
from relaysync.transfer.sender import TargetLink
from relaysync.watch._fsevent import FsEvent

BOUND_S = 30.0  # generous: other suites share the two cores


def _write(source: SourceMapping, name: str, text: str) -> None:
    path = source.root / name
    path.write_text(text)
    earlier = time.time_ns() - 10 * 10**9  # not a file being written (the scan holds those)
    os.utime(path, ns=(earlier, earlier))


async def _until(condition: Callable[[], bool], what: str) -> None:
    with anyio.fail_after(BOUND_S):
        while not condition():
            await anyio.sleep(0.02)


def _files(root: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in root.iterdir() if not p.name.startswith(".")}


def _count_compares(link: TargetLink) -> list[int]:
    """Count the link's comparisons (the list grows by one as each one ends)."""
    ended: list[int] = []
    compare = link._catch_up_by_compare

    async def counted(session: Any) -> None:
        await compare(session)
        ended.append(len(ended))

    link._catch_up_by_compare = counted  # type: ignore[method-assign]
    return ended


def test_a_held_mapping_compares_with_a_new_target_only_at_a_release(tmp_path: Path) -> None:
    """Release 1 went out and the journal was released; the operator then edits a.html and
    creates b.html, unreleased. A target that must catch up by comparison (new, or one that lost
    its data) gets none of that before the next release (it compared against the live manifest
    and got the embargoed content), and all of it at that release."""
    source = _source_in(tmp_path, "manual")
    _write(source, "a.html", "released")
    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    first, fresh = target_folder(tmp_path / "one"), target_folder(tmp_path / "two")

    async def main() -> None:
        await source._record([FsEvent(kind="rescan", path="")])
        async with anyio.create_task_group() as tg:
            port = await tg.start(peer_server(first).serve)
            async with anyio.create_task_group() as links:
                links.start_soon(plain_link(source, port).serve)
                source.set_release(1)
                await _until(lambda: source._acks.get(TGT, 0) >= 1, "release 1 acked")
                links.cancel_scope.cancel()
            source._release(dict(source._acks))  # what _flush_acks does
            assert source.journal.first_seq == 2
            _write(source, "a.html", "edited, not released")
            _write(source, "b.html", "new, not released")
            await source._record([FsEvent(kind="rescan", path="")])
            assert source.send_limit == 1 < source.applied_seq

            port = await tg.start(peer_server(fresh).serve)  # the target lost its data
            link = plain_link(source, port)
            compares = _count_compares(link)
            waits = watched_waits(source)
            tg.start_soon(link.serve)
            await _until(lambda: link.connected and bool(waits), "the link idles")
            assert not compares, "a held mapping compared before its next release"
            assert _files(fresh.root) == {}

            source.set_release(2)
            await _until(lambda: len(compares) >= 1, "the comparison at the release")
            await _until(lambda: source._acks.get(TGT, 0) >= source.applied_seq, "acked")
            assert _files(fresh.root) == {
                "a.html": "edited, not released",
                "b.html": "new, not released",
            }
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
    finally:
        source.close()


def test_a_comparison_due_never_jumps_a_delete_journaled_meanwhile(tmp_path: Path) -> None:
    """A member of an N:M job (erase=False: a comparison erases nothing). The link's journal read
    comes back empty, and before it goes on the source journals a delete; the comparison is due
    then. It sent the tree and checkpointed past the delete, which never reached the target."""
    source = source_mapping(tmp_path)
    for name in ("keep.html", "gone.html"):
        _write(source, name, name)
    folder = target_folder(tmp_path)
    folder.conflict = "newest-mtime"
    interval_s = 0.3
    armed: list[bool] = []

    async def main() -> None:
        await source._record([FsEvent(kind="rescan", path="")])
        async with anyio.create_task_group() as tg:
            port = await tg.start(peer_server(folder).serve)
            link = plain_link(source, port, compare_interval_s=interval_s, erase=False)
            compares = _count_compares(link)
            ended: list[float] = []
            counted = link._catch_up_by_compare

            async def timed(session: Any) -> None:
                await counted(session)
                ended.append(time.monotonic())

            link._catch_up_by_compare = timed  # type: ignore[method-assign]
            read = source.journal.read

            def read_then_delete(after_seq: int, limit: int = 1000) -> list[Any]:
                records = read(after_seq, limit)
                if records or not armed or len(armed) > 1:
                    return records
                armed.append(True)  # once: the delete is journaled and applied now
                (source.root / "gone.html").unlink()
                anyio.from_thread.run(source._record, [FsEvent(kind="delete", path="gone.html")])
                # Until the comparison is due (the link sets it due a moment after `ended`).
                while time.monotonic() < ended[-1] + interval_s + 0.1:
                    time.sleep(0.01)
                return records

            source.journal.read = read_then_delete  # type: ignore[method-assign]
            tg.start_soon(link.serve)
            await _until(lambda: bool(compares) and source._acks.get(TGT, 0) >= 2, "in sync")
            armed.append(True)
            await _until(lambda: len(armed) > 1 and len(compares) >= 3, "compared again")
            assert source._acks.get(TGT, 0) >= 3
            assert sorted(_files(folder.root)) == ["keep.html"], "the delete was skipped"
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
    finally:
        source.close()


def test_a_reopen_racing_a_release_compares_instead_of_skipping(tmp_path: Path) -> None:
    """A held target reopens at watermark 1 (a fast target lost its tail: b.html, seq 2), while
    the source's ack flusher, holding a copy of the acks from before (2), releases the journal
    up to 2 in its worker thread, between the session's check that the journal covers 1 and its
    first read. The read skipped seq 2 without a word: b.html never came (a held mapping does
    not compare on its own). Now the read reports the gap, and the link compares."""
    source = _source_in(tmp_path, "manual")
    _write(source, "a.html", "a")
    _write(source, "b.html", "b")
    folder = target_folder(tmp_path)

    async def main() -> None:
        await source._record([FsEvent(kind="rescan", path="")])
        assert source.applied_seq == 2
        async with anyio.create_task_group() as tg:
            port = await tg.start(peer_server(folder).serve)
            async with anyio.create_task_group() as links:
                links.start_soon(plain_link(source, port).serve)
                source.set_release(1)
                await _until(lambda: source._acks.get(TGT, 0) >= 2, "release 1 acked")
                links.cancel_scope.cancel()
            stale = dict(source._acks)  # _flush_acks copied them before the reopen
            journal_id = source.journal.journal_id
            folder.set_watermark(journal_id, 1)  # the target's lost tail
            (folder.root / "b.html").unlink()
            folder.manifest.remove_tree("b.html")

            read = source.journal.read

            def release_then_read(after_seq: int, limit: int = 1000) -> list[Any]:
                if after_seq == 1 and source.journal.first_seq == 1:
                    source._release(stale)  # the flusher's worker thread, just now
                return read(after_seq, limit)

            source.journal.read = release_then_read  # type: ignore[method-assign]
            tg.start_soon(plain_link(source, port).serve)
            await _until(lambda: (folder.root / "b.html").exists(), "b.html sent again")
            assert source.journal.first_seq == 3  # the release did run in between
            assert _files(folder.root) == {"a.html": "a", "b.html": "b"}
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
    finally:
        source.close()
