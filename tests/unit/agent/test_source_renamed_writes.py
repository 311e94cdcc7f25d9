"""SourceMapping: files closed and then renamed, or published with O_TMPFILE + linkat, are
journaled with their content at once: their close-write came, under another name.

The events come from a real Watcher and are journaled once the disk has its final state (a
source busy journaling). Journaled by `_record` itself, not held back as "hot" for the re-check
(which is not running here): review s24, #1 and #4.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

import anyio

from relaysync.agent.source import SourceMapping
from relaysync.protocol.messages import MappingSpec
from relaysync.watch._fsevent import FsEvent, anonymous_inode
from relaysync.watch.scanner import make_entry
from tests.unit.watch._replay import wait_for, watching
from tests.unit.watch._tmpfile import publish


def _mapping(tmp_path: Path) -> tuple[SourceMapping, Path]:
    root = tmp_path / "src"
    root.mkdir()
    spec = MappingSpec(mapping_id=1, name="m", source_node="n", source_path=str(root), targets=())
    return SourceMapping(spec, tmp_path / "state"), root


def _backdate(root: Path) -> None:
    earlier = time.time_ns() - 10 * 10**9  # a scan holds back files written this second
    for path in root.rglob("*"):
        os.utime(path, ns=(earlier, earlier), follow_symlinks=False)


def _journaled(mapping: SourceMapping) -> dict[str, bytes]:
    """path -> content hash of the last write journaled for it."""
    return {r.path: r.entry.hash for r in mapping.journal.read(0) if r.op == "write" and r.entry}


def _on_disk(root: Path, path: str) -> bytes:
    entry = make_entry(root, path)
    assert entry is not None
    return entry.hash


def _record_watched(
    mapping: SourceMapping, act: Callable[[], None], done: Callable[[list[FsEvent]], bool]
) -> None:
    """Start from a journaled first scan, do `act()` under a real Watcher until `done(events)`,
    then journal those events."""

    async def main() -> None:
        await mapping._record([FsEvent(kind="rescan", path="")])
        async with watching(mapping.root) as batches:
            act()
            await wait_for(lambda: done([e for b in batches for e in b]))
        await mapping._record([e for b in batches for e in b])

    anyio.run(main)


def test_a_log_appended_then_rotated_is_journaled_with_its_new_content(tmp_path: Path) -> None:
    mapping, root = _mapping(tmp_path)
    (root / "app.log").write_text("line1\n")
    _backdate(root)

    def act() -> None:
        with open(root / "app.log", "a") as f:
            f.write("line2\n")
        os.rename(root / "app.log", root / "app.log.1")

    try:
        _record_watched(mapping, act, lambda evs: any(e.kind == "move" for e in evs))
        assert _journaled(mapping)["app.log.1"] == _on_disk(root, "app.log.1")
        assert mapping._held == {}
    finally:
        mapping.close()


def test_a_deploy_copied_into_staging_and_renamed_live_is_journaled_whole(
    tmp_path: Path,
) -> None:
    """`cp -r build/. staging/ && mv staging live`: the files written last were never
    journaled (and the others only after the hot-file hold)."""
    mapping, root = _mapping(tmp_path)
    (root / "staging").mkdir()
    build = tmp_path / "build"
    build.mkdir()
    for i in range(10):
        (build / f"page{i}.html").write_text(f"page {i}")
    _backdate(root)

    def act() -> None:
        shutil.copytree(build, root / "staging", dirs_exist_ok=True)
        os.rename(root / "staging", root / "live")

    try:
        _record_watched(
            mapping, act, lambda evs: any(e.kind == "move" and e.path == "staging" for e in evs)
        )
        journaled = _journaled(mapping)
        for i in range(10):
            assert journaled[f"live/page{i}.html"] == _on_disk(root, f"live/page{i}.html")
        assert mapping._held == {}
    finally:
        mapping.close()


def test_a_file_published_with_o_tmpfile_is_journaled(tmp_path: Path) -> None:
    mapping, root = _mapping(tmp_path)
    (root / "site").mkdir()
    _backdate(root)

    def done(events: list[FsEvent]) -> bool:
        return any(anonymous_inode(e.path) is not None for e in events)

    try:
        _record_watched(mapping, lambda: publish(root / "site", "index.html", b"v1"), done)
        assert _journaled(mapping)["site/index.html"] == _on_disk(root, "site/index.html")
        assert mapping._held == {}
    finally:
        mapping.close()
