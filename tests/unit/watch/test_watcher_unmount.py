"""Watcher: a root folder whose file system is unmounted is reported lost, and watched again
once a file system is mounted there again (real tmpfs mounts; skipped where mount is refused)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from tests._tmpfs import mount_tmpfs, remount_copy, umount, unmounted_at_exit
from tests.unit.watch._replay import wait_for

from relaysync.watch.filters import PathFilter
from relaysync.watch.watcher import FsEvent, Watcher

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def watching(root: Path) -> AsyncIterator[tuple[Watcher, list[FsEvent]]]:
    send, receive = anyio.create_memory_object_stream[list[FsEvent]](100)
    seen: list[FsEvent] = []
    watcher = Watcher(root, PathFilter())

    async def collect() -> None:
        async for batch in receive:
            seen.extend(batch)

    async with anyio.create_task_group() as tg:
        await tg.start(watcher.serve, send)
        tg.start_soon(collect)
        yield watcher, seen
        tg.cancel_scope.cancel()


def _rescans_of_root(seen: list[FsEvent]) -> int:
    return sum(1 for e in seen if e.kind == "rescan" and e.path == "")


async def test_an_unmounted_root_is_lost_and_watched_again_once_mounted(tmp_path: Path) -> None:
    """Found in review: after `umount` nothing was reported (IN_UNMOUNT was not read), and after
    mounting again a new file was never reported: every watch had been dropped silently."""
    root, staging, backup = tmp_path / "disk", tmp_path / "staging", tmp_path / "backup"
    with unmounted_at_exit(root, staging):
        mount_tmpfs(root)
        (root / "sub").mkdir()
        (root / "sub" / "a.txt").write_text("a")
        backup.mkdir()
        (backup / "sub").mkdir()
        (backup / "sub" / "a.txt").write_text("a")
        async with watching(root) as (watcher, seen):
            umount(root)
            await wait_for(lambda: watcher.root_lost)
            await wait_for(lambda: _rescans_of_root(seen) == 1)
            (root / "on-the-mount-point.txt").write_text("not the folder")
            remount_copy(backup, root, staging)
            await wait_for(lambda: not watcher.root_lost)
            await wait_for(lambda: _rescans_of_root(seen) == 2)
            (root / "sub" / "new.txt").write_text("new")
            await wait_for(lambda: any(e.path == "sub/new.txt" for e in seen))
        assert not any(e.path == "on-the-mount-point.txt" for e in seen)


async def test_a_file_system_unmounted_below_the_root_is_rescanned(tmp_path: Path) -> None:
    """A disk mounted on a directory of the watched tree goes: that directory is rescanned (what
    it held is gone) and watched as it now is; the root is not lost."""
    root = tmp_path / "tree"
    root.mkdir()
    with unmounted_at_exit(root / "media"):
        mount_tmpfs(root / "media")
        (root / "media" / "a.txt").write_text("a")
        async with watching(root) as (watcher, seen):
            umount(root / "media")
            await wait_for(lambda: any(e.kind == "rescan" and e.path == "media" for e in seen))
            (root / "media" / "b.txt").write_text("b")
            await wait_for(lambda: any(e.path == "media/b.txt" for e in seen))
            assert not watcher.root_lost
