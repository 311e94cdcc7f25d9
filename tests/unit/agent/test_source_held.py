"""SourceMapping: files a scan held back for being hot follow a rename of their directory."""

from __future__ import annotations

import time
from pathlib import Path

import anyio

from relaysync.agent.source import HOT_FILE_S, SourceMapping
from relaysync.protocol.messages import MappingSpec
from relaysync.watch.watcher import FsEvent


def _mapping(tmp_path: Path) -> tuple[SourceMapping, Path]:
    root = tmp_path / "src"
    root.mkdir()
    spec = MappingSpec(mapping_id=1, name="m", source_node="n", source_path=str(root), targets=())
    return SourceMapping(spec, tmp_path / "state"), root


def _writes(mapping: SourceMapping) -> list[str]:
    return [r.path for r in mapping.journal.read(0) if r.op == "write"]


def test_a_held_file_whose_directory_moved_before_its_recheck_is_journaled_where_it_went(
    tmp_path: Path,
) -> None:
    mapping, root = _mapping(tmp_path)
    (root / "release.tmp").mkdir()
    writer = open(root / "release.tmp" / "page.html", "w")  # still being written: a scan holds it
    writer.write("being written")
    writer.flush()

    async def main() -> None:
        await mapping._record([FsEvent(kind="rescan", path="")])
        assert _writes(mapping) == []  # held, not journaled
        # the deploy renames the directory; its inotify event is still on its way when the
        # re-check looks for the file
        (root / "release.tmp").rename(root / "release-1")
        await mapping.recheck_held_once()
        await mapping._record(
            [FsEvent(kind="move", path="release.tmp", new_path="release-1", is_dir=True)]
        )
        writer.close()
        deadline = time.monotonic() + 10 * HOT_FILE_S
        while not _writes(mapping) and time.monotonic() < deadline:  # cools down, bounded
            await anyio.sleep(HOT_FILE_S / 4)
            await mapping.recheck_held_once()

    try:
        anyio.run(main)
        assert _writes(mapping) == ["release-1/page.html"]
    finally:
        writer.close()
        mapping.close()


def test_a_held_file_that_is_really_gone_is_let_go_after_a_few_rechecks(tmp_path: Path) -> None:
    mapping, root = _mapping(tmp_path)

    async def main() -> None:
        with open(root / "tmp.part", "w") as writer:  # still being written: a scan holds it
            writer.write("being written, then deleted")
            writer.flush()
            await mapping._record([FsEvent(kind="rescan", path="")])
            assert "tmp.part" in mapping._held
            (root / "tmp.part").unlink()
        for _ in range(10):
            await mapping.recheck_held_once()

    try:
        anyio.run(main)
        assert mapping._held == {} and _writes(mapping) == []
    finally:
        mapping.close()
