"""A real SourceMapping (watcher on real inotify, recorder, journal): a file written and closed
in a directory before the watcher watched it (`mkdir d && echo x > d/f`) is journaled once,
with its content, after the hot-file hold (HOT_FILE_S: a scan cannot tell it from one still
being written); one still open for writing there is journaled with what it holds once closed.

Review notes/s24/watch-review.md #5 asked for the first without a hold; a read lease told
"closed" for a file just created and still empty (its creator's descriptor did not count as a
writer yet), so a burst of new files sent empty versions and each file twice: the hold stays.
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
HOLD_S = 0.3  # the hold of a hot file here


def _journaled(mapping: SourceMapping) -> list[str]:
    return [r.path for r in mapping.journal.read(0) if r.op == "write"]


def _sizes(mapping: SourceMapping) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for r in mapping.journal.read(0):
        if r.op == "write" and r.entry is not None:
            out.setdefault(r.path, []).append(r.entry.size)
    return out


async def _until(done: Callable[[], bool]) -> None:
    with anyio.fail_after(BOUND_S):
        while not done():
            await anyio.sleep(0.01)


def test_files_in_a_new_directory_are_journaled_once_with_their_content(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(source_module, "HOT_FILE_S", HOLD_S)
    mapping = source_mapping(tmp_path)
    root = mapping.root
    closed_text = "closed before d was watched"

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(mapping.serve)
            watcher = mapping.watcher
            async with watcher._tables:  # the watcher reads nothing meanwhile: d is unwatched
                (root / "d").mkdir()
                (root / "d" / "f.html").write_text(closed_text)
                writer = open(root / "d" / "open.html", "w")  # noqa: SIM115
                writer.write("still being ")
                writer.flush()
            try:
                await _until(lambda: "d/f.html" in _journaled(mapping))
                writer.write("written")
            finally:
                writer.close()  # its close-write comes: d is watched now
            await _until(lambda: _sizes(mapping).get("d/open.html", [0])[-1] == 19)
            assert _sizes(mapping)["d/f.html"] == [len(closed_text)]  # once, whole
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
    finally:
        mapping.close()
