"""A real SourceMapping (watcher on real inotify, recorder, journal): a file written and closed
in a directory before the watcher watched it (`mkdir d && echo x > d/f`) is journaled at once,
with its content, not held as maybe still being written; one still open for writing there, and
an empty one, are held until closed (or cooled down).

Found in review (notes/s24/watch-review.md #5): its close-write came before the watch on d,
or was coalesced into d's rescan, so the scan's write of it was held HOT_FILE_S. The hold is
made to last longer than the test here: journaled at all means journaled without a hold. An
empty file is held because a file just created is visible, empty, before its creator's
descriptor counts as a writer: a read lease is granted in that window (notes/s24/note.md).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
from tests.component.agent._pair import source_mapping

from relaysync.agent import source as source_module
from relaysync.agent.source import SourceMapping

BOUND_S = 30.0  # every wait below polls for its condition under this bound
FOREVER_S = 3600.0  # the hold of a hot file: longer than any wait here


def _journaled(mapping: SourceMapping) -> list[str]:
    return [r.path for r in mapping.journal.read(0) if r.op == "write"]


def _sizes(mapping: SourceMapping) -> dict[str, list[int]]:
    """Every size each path was journaled with, in order."""
    out: dict[str, list[int]] = {}
    for r in mapping.journal.read(0):
        if r.op == "write" and r.entry is not None:
            out.setdefault(r.path, []).append(r.entry.size)
    return out


async def _until(done: Callable[[], bool]) -> None:
    with anyio.fail_after(BOUND_S):
        while not done():
            await anyio.sleep(0.01)


def test_files_closed_in_a_new_directory_go_at_once_and_open_or_empty_ones_wait_for_their_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(source_module, "HOT_FILE_S", FOREVER_S)
    mapping = source_mapping(tmp_path)
    root = mapping.root
    closed_text = "closed before d was watched"

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(mapping.serve)
            watcher = mapping.watcher
            async with watcher._tables:  # the watcher reads nothing meanwhile: d is unwatched
                (root / "d" / "e" / "f").mkdir(parents=True)
                for deep in ("d", "d/e", "d/e/f"):
                    (root / deep / "f.html").write_text(closed_text)
                (root / "d" / "empty.html").touch()  # closed, but empty: maybe being created
                writer = open(root / "d" / "open.html", "w")  # noqa: SIM115
                writer.write("still being ")
                writer.flush()
            try:
                closed = sorted(["d/f.html", "d/e/f.html", "d/e/f/f.html"])
                await _until(lambda: sorted(_journaled(mapping)) == closed)
                await _until(lambda: {"d/open.html", "d/empty.html"} <= set(mapping._held))
                writer.write("written")
            finally:
                writer.close()  # its close-write comes: d is watched now
            (root / "d" / "empty.html").write_text("filled")
            await _until(lambda: len(_journaled(mapping)) == 5)
            assert _sizes(mapping) == {p: [len(closed_text)] for p in closed} | {
                "d/open.html": [len("still being written")],  # once, whole
                "d/empty.html": [len("filled")],
            }
            assert not set(closed) & set(mapping._held)
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
    finally:
        mapping.close()
