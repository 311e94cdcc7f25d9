"""SourceMapping: a first sync's closing rescan (a stat of every file) waits until the targets
acknowledged the scan's records, so that it does not take CPU from the links' last batches; the
watcher's changes are journaled meanwhile, and the rescan still runs, at the latest after
FINAL_SCAN_WAIT_S."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest

from relaysync.agent import source as source_module
from relaysync.agent.source import SourceMapping
from relaysync.protocol.messages import MappingSpec, TargetSpec
from relaysync.watch.watcher import FsEvent

WAIT_S = 20.0


def _mapping(
    tmp_path: Path, tops: Sequence[str] = ("a", "b", "c"), files: int = 3
) -> tuple[SourceMapping, Path]:
    root = tmp_path / "src"
    for top in tops:
        (root / top).mkdir(parents=True)
        for i in range(files):
            path = root / top / f"f{i}"
            path.write_text(f"{top}{i}")
            past = time.time_ns() - 10 * 10**9  # not "hot": a scan journals it at once
            os.utime(path, ns=(past, past))
    spec = MappingSpec(
        mapping_id=1,
        name="m",
        source_node="s",
        source_path=str(root),
        targets=(TargetSpec(node_id="t1", path="/t1"),),
        durability="fast",
    )
    return SourceMapping(spec, tmp_path / "state"), root


def _full_rescans(mapping: SourceMapping) -> list[int]:
    """Patch `_record` to note the target's backlog at each whole-folder rescan."""
    seen: list[int] = []
    record = mapping._record

    async def noting(events: Sequence[FsEvent], **kwargs: Any) -> None:
        if any(e.kind == "rescan" and not e.path for e in events):
            seen.append(mapping.backlog())
        await record(events, **kwargs)

    mapping._record = noting  # type: ignore[method-assign]
    return seen


async def _until(condition: Callable[[], bool]) -> None:
    with anyio.fail_after(WAIT_S):
        while not condition():
            await anyio.sleep(0.01)


async def _journaled(mapping: SourceMapping, path: str) -> None:
    await _until(lambda: path in {r.path for r in mapping.journal.read(0)})


def test_the_closing_rescan_waits_for_the_targets_while_the_watcher_goes_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(source_module, "FINAL_SCAN_WAIT_S", 600.0)
    mapping, root = _mapping(tmp_path)
    rescans = _full_rescans(mapping)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(mapping.serve)
            await _journaled(mapping, "c/f2")  # the last top-level entry's scan
            (root / "marker").write_text("written after the scan")
            await _journaled(mapping, "marker")  # the watcher's change, while t1 has not acked
            assert rescans == []
            mapping.on_ack("t1", mapping.journal.last_seq)
            await _until(lambda: bool(rescans))
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
    finally:
        mapping.close()
    assert rescans == [0]


def test_the_closing_rescan_runs_after_its_bound_when_a_target_never_acks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(source_module, "FINAL_SCAN_WAIT_S", 0.2)
    mapping, _ = _mapping(tmp_path)
    rescans = _full_rescans(mapping)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(mapping.serve)
            await _until(lambda: bool(rescans))
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
    finally:
        mapping.close()
    assert len(rescans) == 1 and rescans[0] > 0  # t1 still owes every record


@pytest.mark.parametrize(
    ("sizes", "parts"),
    [([4] * 20, [1, 6, 6, 4, 3]), ([0, *[40] * 16], [1] * 17)],
    ids=["small top-level entries, together", "a small one, then large ones, one at a time"],
)
def test_a_first_scan_journals_its_top_level_entries_in_parts_of_about_so_many_changes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sizes: list[int], parts: list[int]
) -> None:
    """After the first top-level entry (alone: the links wait for its records), the others are
    detected and journaled 16 at a time, in parts that end once they hold
    FIRST_SCAN_GROUP_ENTRIES changes (30
    here: a folder of 4 files is 5 changes, one of 40 is 41). No part holds more than that plus
    one entry's changes (review: a group sized from a small first entry held 16 large ones in
    memory at once); every entry is journaled once, in order."""
    monkeypatch.setattr(source_module, "FIRST_SCAN_GROUP_ENTRIES", 30)
    monkeypatch.setattr(source_module, "FINAL_SCAN_WAIT_S", 0.0)
    tops = [f"d{i:02d}" for i in range(len(sizes))]
    root = tmp_path / "src"
    for top, files in zip(tops, sizes, strict=True):
        (root / top).mkdir(parents=True)
        for i in range(files):
            (root / top / f"f{i}").write_text(f"{top}{i}")
            past = time.time_ns() - 10 * 10**9  # not "hot": a scan journals it at once
            os.utime(root / top / f"f{i}", ns=(past, past))
    mapping, _ = _mapping(tmp_path, tops=(), files=0)
    detections: list[tuple[int, int]] = []  # (top-level entries asked, changes found)
    detect = mapping.recorder.detect

    def noting(events: Sequence[FsEvent], **kwargs: Any) -> Any:
        found = detect(events, **kwargs)
        if events and all(e.kind == "rescan" and e.path for e in events):
            detections.append((len(events) - len(found.rest), len(found.changes)))
        return found

    mapping.recorder.detect = noting  # type: ignore[method-assign]

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(mapping.serve)
            await _until(lambda: not mapping.scanning)
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
        records = mapping.journal.read(0, 10_000)
    finally:
        mapping.close()
    assert [n for n, _ in detections] == parts
    assert max(c for _, c in detections) <= 30 + max(sizes) + 1
    paths = [r.path for r in records]
    assert len(paths) == len(set(paths)) == sum(s + 1 for s in sizes)
    assert paths == sorted(paths)
