"""Watcher, real inotify on real files: a directory swapped out of the tree (`mv site
/archive/x` and a new directory at `site` in the same batch) takes its watches with it.

Found in review (notes/s24/watchfix2-review.md #1): the moved-out directory's watch stayed live
under the label `site` (it was looked up by path, and the new directory's watch had replaced
it), so the retention job's `rm -rf /archive/x` was journaled as deletes of the live `site/...`
files, which the targets then deleted.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from tests.unit.watch._replay import ModelTarget, assert_in_step, ev, settle, wait_for, watching
from tests.unit.watch.test_watcher_replaced_dirs import SWAPS, _has
from tests.unit.watch.test_watcher_replaced_dirs import watching as watching_watcher

from relaysync.watch._fsevent import FsEvent
from relaysync.watch.filters import PathFilter
from relaysync.watch.manifest import Manifest
from relaysync.watch.recorder import ChangeRecorder
from relaysync.watch.watcher import Watcher

pytestmark = pytest.mark.anyio

ARCHIVED = ["mkdir", "mv-in-from-outside", "mv-in-from-inside"]  # out-and-back archives nothing


def _release(top: Path, text: str) -> None:
    (top / "css").mkdir(parents=True)
    (top / "index.html").write_text(text)
    (top / "css" / "a.css").write_text(text)


def _trees(tmp_path: Path) -> tuple[Path, Path]:
    root, outside = tmp_path / "root", tmp_path / "outside"
    _release(root / "site", "old release")
    _release(root / "staging", "new release")
    _release(outside / "staging", "new release")
    return root, outside


def _tables_consistent(watcher: Watcher) -> bool:
    """Every watch descriptor has one label, and that label maps back to it."""
    back = all(watcher._wds.get(rel) == wd for wd, rel in watcher._paths.items())
    return back and len(watcher._wds) == len(watcher._paths)


def _swap(root: Path, outside: Path, swap: str) -> None:
    os.rename(root / "site", outside / "old-site")
    SWAPS[swap](root, outside)
    if swap == "mkdir":  # the new release written into the new directory
        (root / "site" / "index.html").write_text("new release")
        (root / "site" / "css").mkdir(exist_ok=True)
        (root / "site" / "css" / "a.css").write_text("new release")


def _under_site(seen: list[FsEvent]) -> list[FsEvent]:
    return [e for e in seen if e.path.startswith("site/") and e.kind in ("delete", "move")]


@pytest.mark.parametrize("swap", ARCHIVED)
async def test_removing_the_archived_copy_after_a_swap_deletes_nothing_live(
    tmp_path: Path, swap: str
) -> None:
    root, outside = _trees(tmp_path)
    async with watching_watcher(root) as (watcher, seen):
        _swap(root, outside, swap)  # back to back: one batch
        await wait_for(lambda: _has(seen, "delete", "site"))
        assert _tables_consistent(watcher)
        (root / "marker-1").write_text("the swap's batch is out")
        await wait_for(lambda: _has(seen, "write", "marker-1"))
        start = len(seen)
        (outside / "old-site" / "index.html").write_text("written in the archive")
        shutil.rmtree(outside / "old-site")  # the retention job
        (root / "marker-2").write_text("after the archive's removal")
        await wait_for(lambda: _has(seen, "write", "marker-2"))
        assert _under_site(seen[start:]) == []
        assert not any(e.path.startswith("site") for e in seen[start:])
        assert _tables_consistent(watcher)
        (root / "site" / "css" / "later.css").write_text("the live site is still watched")
        await wait_for(lambda: _has(seen, "write", "site/css/later.css"))


@pytest.mark.parametrize("swap", list(SWAPS))
async def test_the_watch_tables_stay_consistent_after_a_swap(tmp_path: Path, swap: str) -> None:
    root, outside = _trees(tmp_path)
    async with watching_watcher(root) as (watcher, seen):
        _swap(root, outside, swap)
        await wait_for(lambda: _has(seen, "delete", "site"))
        (root / "marker").write_text("m")
        await wait_for(lambda: _has(seen, "write", "marker"))
        assert _tables_consistent(watcher)
        on_disk = {"site"} | {f"site/{d.name}" for d in (root / "site").iterdir() if d.is_dir()}
        assert {p for p in watcher._wds if p.startswith("site")} == on_disk
        (root / "site" / "css" / "later.css").write_text("watched")
        await wait_for(lambda: _has(seen, "write", "site/css/later.css"))


def _batches(batches: list[list[FsEvent]]) -> list[FsEvent]:
    return [e for b in batches for e in b]


async def test_the_retention_jobs_rm_rf_of_the_old_release_reaches_no_target(
    tmp_path: Path, manifest: Manifest
) -> None:
    """The review's r1c_rmrf_archive.py, end to end through the recorder and a model target."""
    root, archive = tmp_path / "root", tmp_path / "archive"
    _release(root / "site", "old release")
    _release(root / "staging", "new release")
    archive.mkdir()
    rec, target = ChangeRecorder(root, manifest, PathFilter()), ModelTarget()
    settle(rec, target, [ev("rescan", "")])
    async with watching(root) as batches:
        os.rename(root / "site", archive / "site-old")
        os.rename(root / "staging", root / "site")
        await wait_for(lambda: any(e.kind == "move" for e in _batches(batches)))
        settle(rec, target, _batches(batches))
        done = len(batches)
        shutil.rmtree(archive / "site-old")
        (root / "marker").write_text("after the archive's removal")
        await wait_for(lambda: any(e.path == "marker" for e in _batches(batches[done:])))
        settle(rec, target, _batches(batches[done:]))
    assert_in_step(root, manifest, target)
    assert target.state["site/index.html"] == target.state["site/css/a.css"]
