"""A file hard-linked into a source folder while it is still being written under its other name
(outside the folder, so nothing of its writing reaches this folder's watch).

Found in review (s25 newdir review): the watcher reported the new link as a close-write, the
partial content was journaled at once, and the final content only at the next full rescan (an
hour). The link is now an attribute event: hot and open for writing elsewhere, it is held, and
it is journaled once its writer has closed it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import anyio
import xxhash

from relaysync.agent.source import SourceMapping
from relaysync.protocol.messages import MappingSpec

WAIT_S = 60.0  # a generous bound for each condition (the suite runs three at a time)
HOT_FILE_S = 6.0  # held this long after its last write, unless a read lease finds it closed


async def _wait(condition: Callable[[], object]) -> None:
    with anyio.fail_after(WAIT_S):
        while not condition():
            await anyio.sleep(0.01)


def _journaled(mapping: SourceMapping, path: str) -> list[bytes]:
    """The content hashes journaled for `path`, in order."""
    return [
        r.entry.hash
        for r in mapping.journal.read(0)
        if r.path == path and r.op == "write" and r.entry is not None
    ]


def test_a_link_to_a_file_still_written_elsewhere_goes_once_whole(tmp_path: Path) -> None:
    root, outside = tmp_path / "src", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    spec = MappingSpec(mapping_id=1, name="m", source_node="n", source_path=str(root), targets=())
    mapping = SourceMapping(spec, tmp_path / "state", hot_file_s=HOT_FILE_S)
    final = b"first half, " + b"second half"

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(mapping.serve)
            with open(outside / "report.csv", "wb") as writer:
                writer.write(final[:12])
                writer.flush()
                os.link(outside / "report.csv", root / "report.csv")
                await _wait(lambda: "report.csv" in mapping._held)  # open elsewhere: held
                assert _journaled(mapping, "report.csv") == []
                writer.write(final[12:])
            await _wait(lambda: _journaled(mapping, "report.csv"))  # closed: it goes
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
        assert _journaled(mapping, "report.csv") == [xxhash.xxh3_128_digest(final)]
    finally:
        mapping.close()
