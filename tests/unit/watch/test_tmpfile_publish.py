"""Files published with O_TMPFILE + linkat(2) (systemd, atomic-write libraries) are replicated.

Their close-write comes under the anonymous name "#<inode>", never on disk, and the link's
IN_CREATE looks like that of a file still being written: the recorder finds the names the inode
was linked at (review s24, #4). A real Watcher, real files.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from tests.unit.watch._replay import ModelTarget, ev, settle, wait_for, watching
from tests.unit.watch._tmpfile import publish

from relaysync.watch._fsevent import FsEvent, anonymous_inode
from relaysync.watch.filters import PathFilter
from relaysync.watch.manifest import Manifest
from relaysync.watch.recorder import ChangeRecorder
from relaysync.watch.scanner import scan_tree

pytestmark = pytest.mark.anyio


def _anonymous_closed(batches: list[list[FsEvent]]) -> int:
    return sum(anonymous_inode(e.path) is not None for b in batches for e in b)


async def _published(
    tree: Path, manifest: Manifest, flt: PathFilter, where: str, name: str
) -> ModelTarget:
    rec = ChangeRecorder(tree, manifest, flt)
    target = ModelTarget()
    settle(rec, target, [ev("rescan", "")])
    async with watching(tree, flt) as batches:
        publish(tree / where, name, b"content via O_TMPFILE")
        await wait_for(lambda: _anonymous_closed(batches) == 1)
    settle(rec, target, [e for b in batches for e in b])
    assert scan_tree(tree, manifest, flt) == []
    return target


async def test_a_file_published_with_linkat_in_the_root_is_sent(
    tree: Path, manifest: Manifest
) -> None:
    target = await _published(tree, manifest, PathFilter(), "", "published")
    assert target.state["published"][0] == "f"


async def test_a_file_published_with_linkat_below_is_sent_through_an_include_filter(
    tree: Path, manifest: Manifest
) -> None:
    """The anonymous name matches no include pattern: its close-write still comes."""
    (tree / "site").mkdir()
    flt = PathFilter(include=[r"\.html$"])
    target = await _published(tree, manifest, flt, "site", "index.html")
    assert set(target.state) == {"site", "site/index.html"}


async def test_an_excluded_name_published_with_linkat_is_not_sent(
    tree: Path, manifest: Manifest
) -> None:
    flt = PathFilter(exclude=[r"\.lock$"])
    target = await _published(tree, manifest, flt, "", "state.lock")
    assert target.state == {}


async def test_an_o_tmpfile_never_linked_records_nothing(tree: Path, manifest: Manifest) -> None:
    rec = ChangeRecorder(tree, manifest, PathFilter())
    (tree / "other").write_text("x")
    rec.detect_and_apply([ev("rescan", "")])
    async with watching(tree) as batches:
        publish(tree, None, b"scratch")
        await wait_for(lambda: _anonymous_closed(batches) == 1)
    assert rec.detect_and_apply([e for b in batches for e in b]) == []
