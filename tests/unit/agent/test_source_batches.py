"""SourceMapping: a batch the recorder detects in parts is journaled and applied part by part."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import anyio

from relaysync.agent.source import SourceMapping
from relaysync.protocol.messages import MappingSpec
from relaysync.watch.changes import JournalRecord, PendingChange
from relaysync.watch.filters import PathFilter
from relaysync.watch.scanner import scan_tree
from relaysync.watch.watcher import FsEvent


def _mapping(tmp_path: Path) -> tuple[SourceMapping, Path, list[int]]:
    root = tmp_path / "src"
    (root / "d").mkdir(parents=True)
    for name in ("f", "g"):
        (root / "d" / name).write_text(name)
        os.utime(root / "d" / name, ns=(10**18, 10**18))  # not hot: a scan journals it at once
    spec = MappingSpec(mapping_id=1, name="m", source_node="n", source_path=str(root), targets=())
    mapping = SourceMapping(spec, tmp_path / "state")
    appends: list[int] = []  # changes per journal write
    append = mapping.journal.append_async

    async def counting(changes: Sequence[PendingChange]) -> list[JournalRecord]:
        appends.append(len(changes))
        return await append(changes)

    mapping.journal.append_async = counting  # type: ignore[method-assign]
    return mapping, root, appends


def _ops(mapping: SourceMapping, after: int) -> list[tuple[str, str, str]]:
    return [(r.op, r.path, r.new_path) for r in mapping.journal.read(after)]


def test_rename_of_a_directory_then_a_delete_below_it_is_journaled_in_two_writes(
    tmp_path: Path,
) -> None:
    mapping, root, appends = _mapping(tmp_path)

    async def main() -> None:
        await mapping._record([FsEvent(kind="rescan", path="")])
        head = mapping.journal.last_seq
        appends.clear()
        os.rename(root / "d", root / "e")
        os.unlink(root / "e" / "f")
        await mapping._record(
            [
                FsEvent(kind="move", path="d", new_path="e", is_dir=True),
                FsEvent(kind="delete", path="e/f"),
            ]
        )
        assert _ops(mapping, head) == [("rename", "d", "e"), ("delete", "e/f", "")]
        assert appends == [1, 1]
        assert mapping.applied_seq == mapping.journal.last_seq

    try:
        anyio.run(main)
        assert scan_tree(root, mapping.manifest, PathFilter()) == []
    finally:
        mapping.close()


def test_a_batch_without_directory_moves_is_one_journal_write(tmp_path: Path) -> None:
    mapping, root, appends = _mapping(tmp_path)

    async def main() -> None:
        await mapping._record([FsEvent(kind="rescan", path="")])
        appends.clear()
        (root / "d" / "f").write_text("f2")
        os.unlink(root / "d" / "g")
        os.link(root / "d" / "f", root / "d" / "l")
        await mapping._record(
            [
                FsEvent(kind="write", path="d/f"),
                FsEvent(kind="delete", path="d/g"),
                FsEvent(kind="write", path="d/l"),
            ]
        )
        assert appends == [3]  # a hard link's write after a delete too (its names are known)

    try:
        anyio.run(main)
        assert scan_tree(root, mapping.manifest, PathFilter()) == []
    finally:
        mapping.close()


def test_write_through_a_hard_link_journals_every_name(tmp_path: Path) -> None:
    mapping, root, _ = _mapping(tmp_path)
    os.link(root / "d" / "f", root / "h")

    async def main() -> None:
        await mapping._record([FsEvent(kind="rescan", path="")])
        head = mapping.journal.last_seq
        with open(root / "h", "a") as f:
            f.write("more")
        await mapping._record([FsEvent(kind="write", path="h")])
        assert sorted(_ops(mapping, head)) == [("write", "d/f", ""), ("write", "h", "")]

    try:
        anyio.run(main)
        assert scan_tree(root, mapping.manifest, PathFilter()) == []
    finally:
        mapping.close()
