"""Watcher: a root folder whose file system is unmounted is reported lost, and watched again
once a file system is mounted there again; one replaced at its path (a symlink switched, a file
system mounted over it) is watched as it now is (real tmpfs and bind mounts; skipped where
mount is refused)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from tests._tmpfs import bind_mount, mount_tmpfs, remount_copy, umount, unmounted_at_exit
from tests.unit.watch._replay import wait_for

from relaysync.watch import _root
from relaysync.watch import watcher as watcher_module
from relaysync.watch._root import mount_of, mount_table
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


@pytest.mark.parametrize("device", ["same", "tmpfs"])
async def test_a_root_whose_bind_mount_goes_is_lost_and_watched_again_once_bound(
    tmp_path: Path, device: str
) -> None:
    """Was: unmounting a bind mount sends no IN_UNMOUNT (its file system stays mounted where it
    came from), so nothing was noticed: the watcher went on reporting the writes made in the
    bound directory, which was no longer at the root's path, and never those made at the path.
    A bind mount of a directory of the same file system is no mount point to os.path.ismount."""
    root, real = tmp_path / "root", tmp_path / "real"
    with unmounted_at_exit(root, real):
        if device == "tmpfs":
            mount_tmpfs(real)
        else:
            real.mkdir()
        (real / "a.txt").write_text("a")
        bind_mount(real, root)
        async with watching(root) as (watcher, seen):
            umount(root)
            await wait_for(lambda: watcher.root_lost)
            await wait_for(lambda: _rescans_of_root(seen) == 1)
            (real / "elsewhere.txt").write_text("no longer under the root's path")
            (root / "on-the-mount-point.txt").write_text("not the folder")
            bind_mount(real, root)
            await wait_for(lambda: not watcher.root_lost)
            await wait_for(lambda: _rescans_of_root(seen) == 2)
            (root / "new.txt").write_text("new")
            await wait_for(lambda: any(e.path == "new.txt" for e in seen))
        paths = {e.path for e in seen}
        assert "elsewhere.txt" not in paths and "on-the-mount-point.txt" not in paths


async def test_a_root_symlink_switched_to_another_release_is_watched_there(
    tmp_path: Path,
) -> None:
    """A deploy that switches `current` to a new release (`ln -sfn`, or a rename over the link)
    was never noticed: the watches stayed on the old release, whose writes were reported, and
    the new release's were not."""
    old, new, root = releases(tmp_path)
    async with watching(root) as (watcher, seen):
        switch(root, new)
        await wait_for(lambda: _rescans_of_root(seen) == 1)
        (old / "sub" / "stale.txt").write_text("the old release")
        (new / "sub" / "fresh.txt").write_text("the new release")
        await wait_for(lambda: any(e.path == "sub/fresh.txt" for e in seen))
        assert not watcher.root_lost
    assert not any(e.path == "sub/stale.txt" for e in seen)


async def test_a_root_that_is_a_symlink_is_watched_through_it_and_lost_with_it(
    tmp_path: Path,
) -> None:
    """Was: the root's watch did not follow links (IN_DONT_FOLLOW), so a source folder given
    as `current` -> a release had no watch at all: nothing under it was reported, ever."""
    release, root = tmp_path / "release-1", tmp_path / "current"
    (release / "sub").mkdir(parents=True)
    root.symlink_to(release)
    async with watching(root) as (watcher, seen):
        (root / "sub" / "a.txt").write_text("a")
        await wait_for(lambda: any(e.path == "sub/a.txt" for e in seen))
        root.unlink()  # no event tells this: the watch is on the release
        await wait_for(lambda: watcher.root_lost)
        await wait_for(lambda: _rescans_of_root(seen) == 1)
        root.symlink_to(release)
        await wait_for(lambda: not watcher.root_lost)
        # watched again before this rescan goes out (a write before it is the rescan's to find)
        await wait_for(lambda: _rescans_of_root(seen) == 2)
        (root / "sub" / "b.txt").write_text("b")
        await wait_for(lambda: any(e.path == "sub/b.txt" for e in seen))


async def test_a_file_system_mounted_over_the_root_is_watched(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (root / "under.txt").write_text("covered by the mount")
    with unmounted_at_exit(root):
        async with watching(root) as (watcher, seen):
            mount_tmpfs(root)
            await wait_for(lambda: _rescans_of_root(seen) == 1)
            (root / "on-the-new-disk.txt").write_text("x")
            await wait_for(lambda: any(e.path == "on-the-new-disk.txt" for e in seen))
            assert not watcher.root_lost


def test_mounts_are_read_with_their_escapes(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_bytes(
        b"22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        b"90 22 8:1 /srv/a /var/www/my\\040site rw - ext4 /dev/sda1 rw\n"
        b"91 22 0:5 / /mnt/caf\xc3\xa9\\134x rw - tmpfs tmpfs rw\n"
        b"92 22 0:6 / /mnt/a\rb\x0bc rw - tmpfs tmpfs rw\n"  # the kernel escapes no \r, \v
        b"short line\n"
    )
    assert mount_table(str(table)) == {
        ("22", "/"): "1",
        ("90", "/var/www/my site"): "22",
        ("91", "/mnt/caf\u00e9\\x"): "22",
        ("92", "/mnt/a\rb\x0bc"): "22",
    }
    assert mount_table(str(tmp_path / "missing")) == {}


def test_the_mount_of_a_path_is_the_top_one_at_the_longest_mount_point_above_it() -> None:
    # 40 was mounted on /srv/data first, 41 over it, and 30, mounted before both, moved on top
    table = {("1", "/"): "0", ("40", "/srv/data"): "1", ("30", "/srv/data"): "41"}
    table[("41", "/srv/data")] = "40"
    table[("50", "/srv/database")] = "1"
    assert mount_of("/srv/data/www", table) == ("30", "/srv/data")
    assert mount_of("/srv/data", table) == ("30", "/srv/data")
    assert mount_of("/srv/databases", table) == ("1", "/")
    assert mount_of("/srv/database/x", table) == ("50", "/srv/database")
    assert mount_of("/x", {}) is None


def _release(where: Path, version: str) -> Path:
    (where / "sub").mkdir(parents=True)
    (where / "index.html").write_text(version)
    (where / "sub" / "app.js").write_text(version)
    return where


def releases(base: Path) -> tuple[Path, Path, Path]:
    """An old and a new release under `base`, and `current` there pointing at the old one."""
    old, new = _release(base / "r2", "v2"), _release(base / "r1", "v1")
    root = base / "current"
    root.symlink_to(old)
    return old, new, root


def switch(root: Path, to: Path) -> None:
    """Point the `current` link `root` at `to` in one rename, as deploy tools do."""
    (root.parent / "next").symlink_to(to)
    (root.parent / "next").rename(root)


async def _switch_then_retire_old(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    retire: Callable[[Path], object],
    rescans_done: Callable[[int], bool],
) -> None:
    """Switch `current` to the new release, then `retire` the old one, with the poll pushed out
    of reach (what the watcher reads tells the switch): nothing of the old release is reported
    as removed or moved, the root stays watched and the new release's writes are reported."""
    monkeypatch.setattr(_root, "ROOT_POLL_S", 3600.0)
    old, new, root = releases(tmp_path)
    async with watching(root) as (watcher, seen):
        switch(root, new)
        retire(old)
        await wait_for(lambda: rescans_done(_rescans_of_root(seen)))
        await wait_for(lambda: not watcher.root_lost)
        assert [e for e in seen if e.kind in ("delete", "move")] == []
        (new / "sub" / "fresh.txt").write_text("the release now current")
        await wait_for(lambda: any(e.path == "sub/fresh.txt" for e in seen))
        assert not watcher.root_lost


async def test_what_the_old_release_does_after_a_switch_is_never_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A rollback (Capistrano's `deploy:rollback`: switch `current` back, then `rm -rf` the
    release rolled back) removed the old release through watches still on it until the next
    poll, up to ROOT_POLL_S later: its DELETEs were reported as the root's, and the targets
    deleted index.html and sub/app.js, which the release now current has."""
    await _switch_then_retire_old(tmp_path, monkeypatch, shutil.rmtree, lambda n: n == 1)


async def test_the_old_release_moved_away_right_after_a_switch_leaves_the_root_watched(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A deploy that switches `current`, then archives the old release (`mv releases/N
    archive/`) before the next poll: the old root's watch sees MOVE_SELF and no child event, so
    the batch holds no delete. Unchecked, the root stayed lost until the poll (review finding):
    the source held the rescan's deletes as a missing folder's and raised MASS_DELETE_HELD for
    a routine deploy."""
    await _switch_then_retire_old(
        tmp_path, monkeypatch, lambda old: old.rename(tmp_path / "archived"), lambda n: n >= 1
    )


async def test_a_move_out_of_the_old_release_read_as_the_root_is_switched_is_dropped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch waiting for a MOVED_TO while the poll found the root switched went out after the
    poll's rescan: its lone MOVED_FROM of the old release's sub/ became a delete of sub (which
    the new release has), and dropped the watch of the new release's sub/, whose files were
    then never reported. The pairing wait is stretched here so that the poll falls inside it."""
    monkeypatch.setattr(_root, "ROOT_POLL_S", 0.05)
    monkeypatch.setattr(watcher_module, "MOVE_PAIR_S", 1.0)
    monkeypatch.setattr(watcher_module, "PAIR_BATCH_MAX_S", 1.0)
    old, new, root = releases(tmp_path)
    async with watching(root) as (watcher, seen):
        switch(root, new)
        (old / "sub").rename(tmp_path / "archived")
        await wait_for(lambda: _rescans_of_root(seen) == 1)
        await anyio.sleep(1.5)  # past the stretched pairing wait of the move's batch
        assert [e for e in seen if e.kind in ("delete", "move")] == []
        (new / "sub" / "fresh.txt").write_text("the release now current")
        await wait_for(lambda: any(e.path == "sub/fresh.txt" for e in seen))


async def test_a_root_below_a_bind_mount_that_goes_is_lost_not_replaced(tmp_path: Path) -> None:
    """The root inside a mount, not at it (`/data/www`, the disk on `/data`), whose mount goes
    without IN_UNMOUNT (a bind mount, a lazy unmount of a busy disk, a disk also mounted in a
    container): the path showed the directory below the mount point (made before the mount, by
    hand or by the agent), and as the root was no mount point itself that was "replaced": it was
    watched and rescanned as the folder, and its emptiness reached the targets as deletes."""
    disk, data = tmp_path / "disk", tmp_path / "data"
    (disk / "www").mkdir(parents=True)
    (disk / "www" / "a.txt").write_text("a")
    (data / "www").mkdir(parents=True)  # the mount point's own www, empty
    root = data / "www"
    with unmounted_at_exit(data):
        bind_mount(disk, data)
        async with watching(root) as (watcher, seen):
            umount(data)
            await wait_for(lambda: _rescans_of_root(seen) == 1)
            assert watcher.root_lost
            (root / "below-the-mount.txt").write_text("not the folder")
            bind_mount(disk, data)
            await wait_for(lambda: not watcher.root_lost)
            await wait_for(lambda: _rescans_of_root(seen) == 2)  # watched again before it
            (root / "new.txt").write_text("new")
            await wait_for(lambda: any(e.path == "new.txt" for e in seen))
        assert not any(e.path == "below-the-mount.txt" for e in seen)


async def test_a_root_symlink_switched_from_a_mount_point_to_a_directory_is_watched_there(
    tmp_path: Path,
) -> None:
    """`current` -> a disk's mount point, switched to a plain directory: the root had been on a
    mount point and the path no longer was one, so the switch was taken for an unmount, and the
    new release (taken for the mount point's own directory) was never watched: lost for good."""
    disk, plain, root = tmp_path / "disk", tmp_path / "release-2", tmp_path / "current"
    (plain / "sub").mkdir(parents=True)
    with unmounted_at_exit(disk):
        mount_tmpfs(disk)
        (disk / "sub").mkdir()
        root.symlink_to(disk)
        async with watching(root) as (watcher, seen):
            (tmp_path / "next").symlink_to(plain)
            (tmp_path / "next").rename(root)
            await wait_for(lambda: _rescans_of_root(seen) == 1)
            assert not watcher.root_lost
            (plain / "sub" / "fresh.txt").write_text("the new release")
            await wait_for(lambda: any(e.path == "sub/fresh.txt" for e in seen))


_SWITCH_TO_AN_UNWATCHABLE_RELEASE = """
import logging, os, sys
from pathlib import Path
import anyio
from relaysync.watch.filters import PathFilter
from relaysync.watch.watcher import FsEvent, Watcher

async def main(base: Path) -> None:
    old, new, root = base / "release-1", base / "release-2", base / "current"
    old.mkdir()
    new.mkdir(mode=0o100)  # searchable, not readable: inotify refuses a watch (EACCES)
    root.symlink_to(old)
    send, receive = anyio.create_memory_object_stream[list[FsEvent]](100)
    rescans = 0
    async with anyio.create_task_group() as tg:
        await tg.start(Watcher(root, PathFilter()).serve, send)
        (base / "next").symlink_to(new)
        (base / "next").rename(root)
        with anyio.fail_after(10):
            while not rescans:
                rescans += sum(e.path == "" for e in await receive.receive())
        with anyio.move_on_after(2.5):  # five polls
            while True:
                rescans += sum(e.path == "" for e in await receive.receive())
        tg.cancel_scope.cancel()
    print(rescans)

logging.basicConfig(level=logging.WARNING)
anyio.run(main, Path(sys.argv[1]))
"""


def test_a_root_switched_to_a_directory_it_cannot_watch_is_rescanned_once(tmp_path: Path) -> None:
    """A release the agent may not read (or the watch limit reached as it is switched in) gets
    no watch: the directory watched stayed the old one, so every poll found the root "replaced"
    again: two warnings and a rescan of the whole tree every 0.5 s, for ever. Run without the
    capabilities that let root read any directory, as an agent's user would."""
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        pytest.skip("needs root and setpriv to drop the capability to read any directory")
    script = tmp_path / "switch.py"
    script.write_text(_SWITCH_TO_AN_UNWATCHABLE_RELEASE)
    done = subprocess.run(
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
        + [sys.executable, str(script), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["1"]
    assert done.stderr.count("Permission denied") == 1
