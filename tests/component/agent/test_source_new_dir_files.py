"""A real SourceMapping (watcher on real inotify, recorder, journal): a file written and closed
in a directory before the watcher watched it (`mkdir d && echo x > d/f`) is journaled at once,
not held as maybe still being written; one still open for writing there is held until closed.

Found in review (notes/s24/watch-review.md #5): its close-write came before the watch on d,
or was coalesced into d's rescan, so the scan's write of it was held HOT_FILE_S. The hold is
made to last longer than the test here: journaled at all means journaled without a hold.
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


async def _until(done: Callable[[], bool]) -> None:
    with anyio.fail_after(BOUND_S):
        while not done():
            await anyio.sleep(0.01)


def test_files_closed_in_a_new_directory_go_at_once_and_open_ones_wait_for_their_close(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(source_module, "HOT_FILE_S", FOREVER_S)
    mapping = source_mapping(tmp_path)
    root = mapping.root

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(mapping.serve)
            watcher = mapping.watcher
            async with watcher._tables:  # the watcher reads nothing meanwhile: d is unwatched
                (root / "d").mkdir()
                (root / "d" / "f.html").write_text("closed before d was watched")
                writer = open(root / "d" / "open.html", "w")  # noqa: SIM115
                writer.write("still being written")
                writer.flush()
            try:
                await _until(lambda: "d/f.html" in _journaled(mapping))
                await _until(lambda: "d/open.html" in mapping._held)
                assert "d/open.html" not in _journaled(mapping)
            finally:
                writer.close()  # its close-write comes: d is watched now
            await _until(lambda: "d/open.html" in _journaled(mapping))
            assert "d/f.html" not in mapping._held
            assert sorted(_journaled(mapping)) == ["d/f.html", "d/open.html"]  # once each
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
    finally:
        mapping.close()
