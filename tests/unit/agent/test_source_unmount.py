"""SourceMapping: an unmounted source folder holds the deletes a rescan finds, and the source
journals again once the disk is back (real tmpfs mounts; skipped where mount is refused)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import anyio

from relaysync.agent.source import SourceMapping
from relaysync.protocol.messages import MappingSpec, MassDeleteHeld
from relaysync.watch.watcher import FsEvent
from tests._tmpfs import bind_mount, mount_tmpfs, remount_copy, umount, unmounted_at_exit

OLD_NS = 10**18  # long cooled down: a scan journals such a file at once
WAIT_S = 30.0  # bound of every poll: the test machine is shared and loaded


async def _wait(condition: Callable[[], object]) -> None:
    with anyio.fail_after(WAIT_S):
        while not condition():
            await anyio.sleep(0.01)


def _fill(root: Path) -> None:
    """A small folder, fewer entries than GUARD_MIN_DELETES: held only as a missing folder."""
    for d in range(2):
        (root / f"d{d}").mkdir()
        for i in range(20):
            (root / f"d{d}" / f"{i}.txt").write_text(str(i))
            os.utime(root / f"d{d}" / f"{i}.txt", ns=(OLD_NS, OLD_NS))
        os.utime(root / f"d{d}", ns=(OLD_NS, OLD_NS))


def _unmount_and_back(
    root: Path, state: Path, unmount: Callable[[], None], back: Callable[[], None]
) -> list[MassDeleteHeld]:
    """Run a source on `root` (filled by `_fill`); `unmount()` it: its deletes must be held as a
    missing folder's; `back()` again: the hold must end and a new file be journaled. Returns
    the alarms raised."""
    alarms: list[MassDeleteHeld] = []

    async def main(mapping: SourceMapping) -> None:
        await mapping._record([FsEvent(kind="rescan", path="")])  # what serve() starts with
        head = mapping.journal.last_seq
        async with anyio.create_task_group() as tg:
            await tg.start(mapping.serve)
            unmount()
            await _wait(lambda: alarms)
            assert [(a.deletes, a.root_missing) for a in alarms] == [(42, True)]
            assert list(mapping.journal.read(head)) == []  # no delete goes to the targets
            back()
            await _wait(lambda: not mapping._guard_held)
            (root / "d0" / "new.txt").write_text("after the folder is back")
            await _wait(lambda: [r.path for r in mapping.journal.read(head)] == ["d0/new.txt"])
            tg.cancel_scope.cancel()

    spec = MappingSpec(mapping_id=1, name="m", source_node="n", source_path=str(root), targets=())
    mapping = SourceMapping(spec, state)
    mapping.on_guard = alarms.append
    try:
        anyio.run(main, mapping)
    finally:
        mapping.close()
    return alarms


def test_an_unmounted_source_holds_its_deletes_and_journals_again_once_remounted(
    tmp_path: Path,
) -> None:
    """Found in review: after `umount` of the source's disk nothing happened (no event, no
    rescan, no alarm), and after mounting it again a new file was never journaled: every watch
    had been dropped silently. Now the unmount is the guard's "folder missing" (the rescan's
    deletes are held and alarmed), and once the disk is back the hold ends and files are
    journaled again."""
    root, staging, backup = tmp_path / "disk", tmp_path / "staging", tmp_path / "backup"
    with unmounted_at_exit(root, staging):
        mount_tmpfs(root)
        _fill(root)
        shutil.copytree(root, backup)
        alarms = _unmount_and_back(
            root,
            tmp_path / "state",
            lambda: umount(root),
            lambda: remount_copy(backup, root, staging),
        )
    assert len(alarms) == 1


def test_a_source_whose_bind_mount_goes_holds_its_deletes_and_journals_again_once_bound(
    tmp_path: Path,
) -> None:
    """Was: unmounting a bind-mounted source folder sent no IN_UNMOUNT, so nothing was noticed
    (the watcher went on reporting the bound directory, no longer at the folder's path); a
    rescan then found the mount point empty and, the folder being small (42 entries, under
    the guard's threshold), its deletes went to the targets."""
    root, real = tmp_path / "root", tmp_path / "real"
    with unmounted_at_exit(root):
        real.mkdir()
        _fill(real)
        bind_mount(real, root)
        alarms = _unmount_and_back(
            root, tmp_path / "state", lambda: umount(root), lambda: bind_mount(real, root)
        )
    assert len(alarms) == 1


def test_a_source_inside_a_bind_mount_that_goes_holds_its_deletes(tmp_path: Path) -> None:
    """The source folder is `data/www`, `data` a bind mount, and `data/www` exists below it
    too (empty): unbound (no IN_UNMOUNT), the path showed that empty directory, taken for the
    folder replaced, and its 42 deletes, under the guard's threshold, went to the targets."""
    disk, data = tmp_path / "disk", tmp_path / "data"
    (disk / "www").mkdir(parents=True)
    _fill(disk / "www")
    (data / "www").mkdir(parents=True)
    with unmounted_at_exit(data):
        bind_mount(disk, data)
        alarms = _unmount_and_back(
            data / "www", tmp_path / "state", lambda: umount(data), lambda: bind_mount(disk, data)
        )
    assert len(alarms) == 1
