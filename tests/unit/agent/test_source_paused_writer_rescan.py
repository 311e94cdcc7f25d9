"""SourceMapping: a writer that paused mid-file longer than `hot_file_s` does not get its half
journaled as final when a rescan (inotify overflow, periodic rescan, start-up) finds the file
before the watcher's "modify" for it does (or when no "modify" comes at all).

Found at stop 34's close: the open-writer hold (`probe_lease`, OPEN_WRITER_HOLD_MAX_S) applied
only to paths of a "modify" in the batch; a file a rescan found was judged by its mtime alone,
so a 100 KB half of a 200 KB file paused for 0.3 s (hot_file_s 0.2 s) was journaled as final.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from relaysync.agent.source import SourceMapping
from relaysync.protocol.messages import MappingSpec
from relaysync.watch.watcher import FsEvent

WAIT_S = 15.0
HOT_S = 0.2
HALF = b"x" * 100_000
PATH = "d/big.bin"


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    (tmp_path / "src" / "d").mkdir(parents=True)
    return tmp_path / "src"


@pytest.fixture
def mapping(root: Path, tmp_path: Path) -> Iterator[SourceMapping]:
    spec = MappingSpec(mapping_id=1, name="m", source_node="n", source_path=str(root), targets=())
    m = SourceMapping(spec, tmp_path / "state", hot_file_s=HOT_S, rescan_interval_s=0)
    try:
        yield m
    finally:
        m.close()


def _written(mapping: SourceMapping) -> list[int]:
    return [
        r.entry.size
        for r in mapping.journal.read(0)
        if r.op == "write" and r.path == PATH and r.entry is not None
    ]


def _age_s(path: Path) -> float:
    return (time.time_ns() - os.stat(path).st_mtime_ns) / 1e9


async def _until(condition: Callable[[], object]) -> None:
    with anyio.fail_after(WAIT_S):
        while not condition():
            await anyio.sleep(0.02)


@pytest.mark.parametrize(
    "batch",
    [
        [FsEvent(kind="rescan", path="d", is_dir=True)],  # the "modify" not yet reported
        [FsEvent(kind="rescan", path="", is_dir=True)],
        # both in one batch, the rescan first: coalesce drops the "modify" it covers
        [FsEvent(kind="rescan", path="d", is_dir=True), FsEvent(kind="modify", path=PATH)],
    ],
    ids=["rescan-of-dir", "rescan-of-root", "rescan-then-modify"],
)
@pytest.mark.anyio
async def test_a_rescan_finding_a_paused_writers_cooled_file_holds_it(
    root: Path, mapping: SourceMapping, batch: list[FsEvent]
) -> None:
    with open(root / PATH, "wb") as writer:
        writer.write(HALF)
        writer.flush()  # then the writer pauses, its file open for writing
        await _until(lambda: _age_s(root / PATH) > HOT_S * 1.5)  # cooled, by its mtime
        await mapping._record(batch)
        assert _written(mapping) == []  # the bug: [100_000]
        assert PATH in mapping._held
        await mapping.recheck_held_once()  # still open: held again
        assert _written(mapping) == []
        writer.write(b"y" * 100_000)
    await mapping._record([FsEvent(kind="write", path=PATH)])  # its close-write
    assert _written(mapping) == [200_000]


@pytest.mark.anyio
async def test_a_hot_file_a_rescan_found_open_stays_held_once_it_cools(
    root: Path, mapping: SourceMapping
) -> None:
    """Found hot (mtime within hot_file_s) by a rescan while open for writing: held; the re-check
    after it cooled must still see the writer, not judge the file by its mtime alone."""
    with open(root / PATH, "wb") as writer:
        writer.write(HALF)
        writer.flush()
        await mapping._record([FsEvent(kind="rescan", path="d", is_dir=True)])
        assert PATH in mapping._held and _written(mapping) == []
        await _until(lambda: _age_s(root / PATH) > HOT_S * 1.5)
        await mapping.recheck_held_once()
        assert _written(mapping) == []  # the bug: [100_000]
        assert PATH in mapping._held
        writer.write(b"y" * 100_000)
    await mapping._record([FsEvent(kind="write", path=PATH)])
    assert _written(mapping) == [200_000]


@pytest.mark.anyio
async def test_the_start_up_scan_holds_a_paused_writers_file(
    root: Path, mapping: SourceMapping
) -> None:
    """With the real watcher: the file was half written, and its writer paused, before the
    mapping started; the start-up scan finds it cooled, and no "modify" ever comes for it."""
    with open(root / PATH, "wb") as writer:
        writer.write(HALF)
        writer.flush()
        await _until(lambda: _age_s(root / PATH) > HOT_S * 1.5)
        async with anyio.create_task_group() as tg:
            await tg.start(mapping.serve)  # started once the start-up scan is journaled
            assert _written(mapping) == []  # the bug: [100_000]
            assert PATH in mapping._held
            writer.write(b"y" * 100_000)
            writer.close()
            await _until(lambda: _written(mapping))  # its close-write, through the watcher
            tg.cancel_scope.cancel()
    assert _written(mapping) == [200_000]
