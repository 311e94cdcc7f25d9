"""Watcher, real inotify on real files: a directory moved out of the tree and replaced at its
name in the same batch stays watched; a directory whose absolute path exceeds PATH_MAX (its
path below the root does not) is watched; a close-write below a rescan stays in the batch.

Found in review (notes/s24/watch-review.md #2, #5, #6): before, nothing written in such a
directory was ever reported (until a restart), and a file closed in a new directory was held
as still being written."""

from __future__ import annotations

import logging
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from tests.unit.watch._replay import wait_for

from relaysync.watch import _tree_watches
from relaysync.watch._tree_watches import under
from relaysync.watch.filters import PathFilter
from relaysync.watch.watcher import FsEvent, Watcher

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def watching(
    root: Path, watcher: Watcher | None = None
) -> AsyncIterator[tuple[Watcher, list[FsEvent]]]:
    send, receive = anyio.create_memory_object_stream[list[FsEvent]](100)
    seen: list[FsEvent] = []
    watcher = watcher or Watcher(root, PathFilter())

    async def collect() -> None:
        async for batch in receive:
            seen.extend(batch)

    async with anyio.create_task_group() as tg:
        await tg.start(watcher.serve, send)
        tg.start_soon(collect)
        yield watcher, seen
        tg.cancel_scope.cancel()


def _has(seen: list[FsEvent], kind: str, path: str) -> bool:
    return any(e.kind == kind and e.path == path for e in seen)


def _mkdir_in_place(root: Path, outside: Path) -> None:
    (root / "site" / "sub").mkdir(parents=True)


def _staging_from_outside(root: Path, outside: Path) -> None:
    os.rename(outside / "staging", root / "site")


def _out_and_back(root: Path, outside: Path) -> None:
    os.rename(outside / "old-site", root / "site")


def _staging_from_inside(root: Path, outside: Path) -> None:
    os.rename(root / "staging", root / "site")


SWAPS: dict[str, Callable[[Path, Path], None]] = {
    "mkdir": _mkdir_in_place,
    "mv-in-from-outside": _staging_from_outside,
    "out-and-back": _out_and_back,
    "mv-in-from-inside": _staging_from_inside,
}


@pytest.mark.parametrize("swap", list(SWAPS))
async def test_a_directory_moved_out_and_replaced_in_one_batch_stays_watched(
    tmp_path: Path, swap: str
) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "site" / "sub").mkdir(parents=True)
    (root / "staging" / "sub").mkdir(parents=True)
    (outside / "staging" / "sub").mkdir(parents=True)
    async with watching(root) as (_, seen):
        # back to back: one batch (the MOVED_FROM waits MOVE_PAIR_S for a MOVED_TO)
        os.rename(root / "site", outside / "old-site")
        SWAPS[swap](root, outside)
        await wait_for(lambda: _has(seen, "delete", "site"))
        (root / "site" / "sub" / "later.html").write_text("written after the swap")
        await wait_for(lambda: _has(seen, "write", "site/sub/later.html"))
        assert _has(seen, "rescan", "site") or _has(seen, "move", "staging")


async def test_a_directory_moved_out_and_not_replaced_is_unwatched(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "site").mkdir(parents=True)
    outside.mkdir()
    async with watching(root) as (watcher, seen):
        os.rename(root / "site", outside / "old-site")
        await wait_for(lambda: _has(seen, "delete", "site"))
        assert "site" not in watcher._wds
        (outside / "old-site" / "x").write_text("out of the tree")
        (root / "marker").write_text("m")
        await wait_for(lambda: _has(seen, "write", "marker"))
    assert not any(e.path.startswith("site") for e in seen if e.kind != "delete")


def _deep_tree(root: Path, over_s: int) -> tuple[str, int]:
    """Directories of 200-byte names below `root` until the absolute path exceeds PATH_MAX by
    `over_s` (the path below the root stays under it); (their relative path, the deepest's fd)."""
    seg = "d" * 200
    cur, rel = os.open(root, os.O_RDONLY), ""
    while len(str(root)) + len(rel) < 4096 + over_s:
        os.mkdir(seg, dir_fd=cur)
        nxt = os.open(seg, os.O_RDONLY, dir_fd=cur)
        os.close(cur)
        cur, rel = nxt, f"{rel}/{seg}" if rel else seg
    assert len(rel) < 4000
    return rel, cur


def _write_at(dir_fd: int, name: str) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=dir_fd)
    os.write(fd, b"x")
    os.close(fd)


async def test_a_directory_past_path_max_is_watched_through_a_short_path(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    root = tmp_path / ("r" * 250) / ("s" * 250)
    root.mkdir(parents=True)
    rel, deepest = _deep_tree(root, 200)
    try:
        async with watching(root) as (watcher, seen):
            assert rel in watcher._wds
            _write_at(deepest, "late.txt")
            await wait_for(lambda: _has(seen, "write", f"{rel}/late.txt"))
            os.mkdir("new", dir_fd=deepest)  # a new one, watched as it comes
            await wait_for(lambda: f"{rel}/new" in watcher._wds)
            new = os.open("new", os.O_RDONLY, dir_fd=deepest)
            try:
                _write_at(new, "in-new.txt")
            finally:
                os.close(new)
            await wait_for(lambda: _has(seen, "write", f"{rel}/new/in-new.txt"))
    finally:
        os.close(deepest)
    assert "fix its permissions" not in caplog.text


async def test_without_proc_a_directory_past_path_max_is_rescanned_with_its_true_cause(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_tree_watches, "_PROC_FD", str(tmp_path / "no-proc"))
    caplog.set_level(logging.WARNING)
    root = tmp_path / ("r" * 250) / ("s" * 250)
    root.mkdir(parents=True)
    rel, deepest = _deep_tree(root, 100)
    os.close(deepest)
    watcher = Watcher(root, PathFilter(), unwatched_scan_interval_s=0.05)
    async with watching(root, watcher) as (_, seen):
        # the first directory past PATH_MAX, with what is below it
        await wait_for(
            lambda: any(e.kind == "rescan" and under(rel, e.path) and e.path for e in seen)
        )
    assert "longer than PATH_MAX" in caplog.text and "fix its permissions" not in caplog.text


def test_a_close_write_below_a_rescan_of_the_same_batch_is_kept(tmp_path: Path) -> None:
    """`mkdir d; echo x > d/f` read in one batch: the write says that d/f was closed, which
    the source needs to know (a scan's write of a file modified lately is held otherwise)."""
    watcher = Watcher(tmp_path, PathFilter())
    watcher._batch = [
        FsEvent(kind="rescan", path="d", is_dir=True),
        FsEvent(kind="write", path="d/f.html"),
        FsEvent(kind="write", path="d/f.html"),
        FsEvent(kind="attr", path="d/f.html"),
    ]
    events = watcher._batch_events(watcher._presence.changes, checked=False)
    assert events == [
        FsEvent(kind="rescan", path="d", is_dir=True),
        FsEvent(kind="write", path="d/f.html"),
    ]
