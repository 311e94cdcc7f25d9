"""SourceMapping with its real Watcher: a writer that pauses mid-file, its file open for writing,
does not get the half it wrote journaled as final; the whole file is journaled at its close.

Found in review (notes/s34/watch_review.md #4): a file quiet for 1 s with no close-write was
reported as a close-write ("write") and journaled at once, bypassing the hot-file hold: a 100 KB
half of a 200 KB download was committed on the targets (and their caches purged to serve it).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest

from relaysync.agent.source import SourceMapping
from relaysync.protocol.messages import MappingSpec

WAIT_S = 15.0
HALF = b"x" * 100_000


def _written(mapping: SourceMapping) -> list[int]:
    return [
        r.entry.size
        for r in mapping.journal.read(0)
        if r.op == "write" and r.path == "download.iso" and r.entry is not None
    ]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def _until(condition: Callable[[], object]) -> None:
    with anyio.fail_after(WAIT_S):
        while not condition():
            await anyio.sleep(0.02)


@pytest.mark.anyio
async def test_a_paused_writers_half_file_is_held_until_its_close(tmp_path: Path) -> None:
    root = tmp_path / "src"
    root.mkdir()
    spec = MappingSpec(mapping_id=1, name="m", source_node="n", source_path=str(root), targets=())
    mapping = SourceMapping(spec, tmp_path / "state")
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(mapping.serve)
            with open(root / "download.iso", "wb") as writer:
                writer.write(HALF)
                writer.flush()  # then the network stalls: the file stays open for writing
                # the watcher reports it once quiet (1 s), as not closed: held, or (the bug)
                # journaled at once
                await _until(lambda: "download.iso" in mapping._held or _written(mapping))
                assert _written(mapping) == []
                await mapping.recheck_held_once()  # its mtime is over a second old by now
                assert _written(mapping) == []
                assert "download.iso" in mapping._held
                writer.write(b"y" * 100_000)
            await _until(lambda: _written(mapping))  # its close-write
            tg.cancel_scope.cancel()
        assert _written(mapping) == [200_000]
    finally:
        mapping.close()


def _written_at(mapping: SourceMapping, path: str) -> list[int]:
    return [
        r.entry.size
        for r in mapping.journal.read(0)
        if r.op == "write" and r.path == path and r.entry is not None
    ]


@pytest.mark.anyio
async def test_a_paused_writers_file_stays_held_when_its_directory_is_renamed(
    tmp_path: Path,
) -> None:
    """A deploy renames `release.tmp/` into place while a writer has a file in it open, paused.
    Found in review: the hold moved to the new name but forgot that the file was open for
    writing, so the next re-check let the half go by its mtime alone."""
    root = tmp_path / "src"
    root.mkdir()
    spec = MappingSpec(mapping_id=1, name="m", source_node="n", source_path=str(root), targets=())
    mapping = SourceMapping(spec, tmp_path / "state", hot_file_s=0.2)  # mtime says "cooled"
    try:
        async with anyio.create_task_group() as tg:
            await tg.start(mapping.serve)
            (root / "release.tmp").mkdir()  # watched once journaled: the file's events come
            await _until(lambda: any(r.path == "release.tmp" for r in mapping.journal.read(0)))
            with open(root / "release.tmp" / "big.bin", "wb") as writer:
                writer.write(HALF)
                writer.flush()
                await _until(lambda: "release.tmp/big.bin" in mapping._held)
                (root / "release.tmp").rename(root / "release")
                await _until(lambda: "release/big.bin" in mapping._held)
                await mapping.recheck_held_once()  # its mtime is over a second old by now
                await mapping.recheck_held_once()
                assert _written_at(mapping, "release/big.bin") == []
                assert "release/big.bin" in mapping._held
                writer.write(b"y" * 100_000)
            await _until(lambda: _written_at(mapping, "release/big.bin"))  # its close-write
            tg.cancel_scope.cancel()
        assert _written_at(mapping, "release/big.bin") == [200_000]
    finally:
        mapping.close()
