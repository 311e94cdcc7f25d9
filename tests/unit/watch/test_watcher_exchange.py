"""Watcher, real inotify on real files: the watch tables follow directories that trade places
within one batch.

Found in review (notes/s24/rev3.md #1, #2):
- `renameat2(a, b, RENAME_EXCHANGE)` (`mv --exchange`, the atomic swap of a release) arrives as
  two paired moves a->b, b->a; the first removed b's watch as "replaced", though that directory
  is alive at a: the tables ended as {a: the watch of the directory now at b}, the directory at a
  unwatched, its edits missed and b's journaled under a (a live file deleted on the targets).
- `mkdir n; mv n m; mkdir n` in one batch: the walk of the first n's CREATE, run before the
  MOVED_FROM was handled, watched the second n, which the move then took to m: m unwatched.
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

import pytest
from tests.unit.watch._replay import ModelTarget, assert_in_step, ev, settle, wait_for, watching
from tests.unit.watch.test_watcher_replaced_dirs import _has
from tests.unit.watch.test_watcher_replaced_dirs import watching as watching_watcher
from tests.unit.watch.test_watcher_swap_archive import _tables_consistent

from relaysync.watch._fsevent import FsEvent
from relaysync.watch._tree_watches import _MASK
from relaysync.watch.filters import PathFilter
from relaysync.watch.manifest import Manifest
from relaysync.watch.recorder import ChangeRecorder
from relaysync.watch.watcher import Watcher

pytestmark = pytest.mark.anyio

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_libc = ctypes.CDLL(None, use_errno=True)


def _exchange(a: Path, b: Path) -> None:
    """`mv --exchange a b`: renameat2(2) with RENAME_EXCHANGE."""
    if not hasattr(_libc, "renameat2"):
        pytest.skip("no renameat2 in this libc")
    done = _libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if done != 0:
        code = ctypes.get_errno()
        if code in (errno.ENOSYS, errno.EINVAL):
            pytest.skip("RENAME_EXCHANGE not supported here")
        raise OSError(code, os.strerror(code))


def _release(top: Path, text: str) -> None:
    (top / "sub").mkdir(parents=True)
    (top / "f").write_text(text)
    (top / "sub" / "g").write_text(text)


def _watched_as_on_disk(watcher: Watcher, root: Path) -> bool:
    """The tables are each other's inverse, every directory on disk has a label, and each label
    maps to the watch the kernel has on the directory at that path now (inotify gives the same
    descriptor again for the same inode)."""
    assert watcher._ino is not None
    on_disk = {""} | {str(p.relative_to(root)) for p in root.rglob("*") if p.is_dir()}
    if not _tables_consistent(watcher) or set(watcher._wds) != on_disk:
        return False
    kernel = {rel: watcher._ino.add_watch(root / rel, _MASK).wd for rel in on_disk}
    return kernel == watcher._wds


async def _batch_out(seen: list[FsEvent], root: Path, name: str) -> None:
    (root / name).write_text(name)
    await wait_for(lambda: _has(seen, "write", name))


async def test_directories_exchanged_are_each_watched_under_its_new_name(tmp_path: Path) -> None:
    root = tmp_path / "root"
    _release(root / "a", "a")
    _release(root / "b", "b")
    async with watching_watcher(root) as (watcher, seen):
        _exchange(root / "a", root / "b")
        await _batch_out(seen, root, "marker-1")
        assert _watched_as_on_disk(watcher, root)
        start = len(seen)
        (root / "a" / "f").write_text("edited a")
        (root / "a" / "sub" / "new").write_text("new in a")
        (root / "b" / "sub" / "new").write_text("new in b")
        os.unlink(root / "b" / "sub" / "g")
        await _batch_out(seen, root, "marker-2")
        await wait_for(lambda: _has(seen, "delete", "b/sub/g"))
        for path in ("a/f", "a/sub/new", "b/sub/new"):
            await wait_for(lambda p=path: _has(seen, "write", p))  # type: ignore[misc]
        wrong = {"b/f", "a/sub/g"}
        assert not [e for e in seen[start:] if e.path in wrong]
        assert _watched_as_on_disk(watcher, root)


async def test_an_exchange_and_the_edits_after_it_reach_the_target(
    tmp_path: Path, manifest: Manifest
) -> None:
    """The review's t_exchange_e2e2.py: through the recorder to a model target."""
    root = tmp_path / "root"
    _release(root / "a", "a")
    _release(root / "b", "b")
    rec, target = ChangeRecorder(root, manifest, PathFilter()), ModelTarget()
    settle(rec, target, [ev("rescan", "")])
    async with watching(root) as batches:
        _exchange(root / "a", root / "b")
        (root / "marker-1").write_text("the exchange's batch is out")
        await wait_for(lambda: any(e.path == "marker-1" for b in batches for e in b))
        settle(rec, target, [e for b in batches for e in b])
        done = len(batches)
        (root / "a" / "f").write_text("edited a")  # the live tree, now at a
        (root / "a" / "sub" / "new").write_text("new in a")
        os.unlink(root / "b" / "sub" / "g")  # the old one, now at b, cleaned
        (root / "marker-2").write_text("after the edits")
        await wait_for(lambda: any(e.path == "marker-2" for b in batches[done:] for e in b))
        settle(rec, target, [e for b in batches[done:] for e in b])
    assert_in_step(root, manifest, target)


async def test_a_directory_renamed_away_from_a_name_made_again_stays_watched(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    async with watching_watcher(root) as (watcher, seen):
        (root / "n" / "s").mkdir(parents=True)
        os.rename(root / "n", root / "m")
        (root / "n").mkdir()
        await _batch_out(seen, root, "marker-1")
        await wait_for(lambda: _has(seen, "move", "n"))
        assert _watched_as_on_disk(watcher, root)
        for path in ("m/later", "m/s/later", "n/later"):
            (root / path).write_text("later")
            await wait_for(lambda p=path: _has(seen, "write", p))  # type: ignore[misc]
        assert _watched_as_on_disk(watcher, root)


async def test_files_and_links_exchanged_both_stay_on_the_target(
    tmp_path: Path, manifest: Manifest
) -> None:
    """`mv --exchange fa fb` and the atomic switch `mv --exchange current previous` of two
    symlinks: each half is a rename onto a name whose old entry is not gone, but at the other
    name. Found in review (notes/s34/watch_review.md #2): the recorder took the old name of each
    rename for gone, and the targets (and the manifest) lost one of the two."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "fa").write_text("A")
    (root / "fb").write_text("BBB")
    os.symlink("releases/r1", root / "current")
    os.symlink("releases/r2", root / "previous")
    rec, target = ChangeRecorder(root, manifest, PathFilter()), ModelTarget()
    settle(rec, target, [ev("rescan", "")])
    async with watching(root) as batches:
        _exchange(root / "fa", root / "fb")
        _exchange(root / "current", root / "previous")
        (root / "marker").write_text("after the exchanges")
        await wait_for(lambda: any(e.path == "marker" for b in batches for e in b))
    settle(rec, target, [e for b in batches for e in b])
    assert (root / "fb").read_text() == "A"
    assert set(target.state) == {"fa", "fb", "current", "previous", "marker"}
    assert_in_step(root, manifest, target)
