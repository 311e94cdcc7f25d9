"""A manual send covers every change journaled when it came, also one whose manifest update was
still under way (`SourceMapping._record` journals, then applies in a worker thread): that one
waited for the next release (seen as a deploy's rename left behind by "send now" under load)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import anyio
from tests.component.agent.test_link_lifecycle import _source_in

from relaysync.watch._fsevent import FsEvent


def test_a_release_covers_a_change_journaled_but_not_yet_applied(tmp_path: Path) -> None:
    source = _source_in(tmp_path, "manual")
    earlier = time.time_ns() - 10 * 10**9  # not files being written
    path = source.root / "index.html"
    path.write_text("version 1")
    os.utime(path, ns=(earlier, earlier))

    async def main() -> None:
        await source._record([FsEvent(kind="rescan", path="")])
        assert source.applied_seq == 1
        path.write_text("version two")
        os.utime(path, ns=(earlier + 10**9, earlier + 10**9))
        detected = source.recorder.detect([FsEvent(kind="write", path="index.html")])
        records = await source.journal.append_async(detected.changes)  # journaled, not applied
        assert source.applied_seq < records[-1].seq
        assert source.set_release(1)
        assert source.send_upto == records[-1].seq
        assert source.send_limit == source.applied_seq  # not before its apply
        await anyio.to_thread.run_sync(source._apply, records)
        source.applied_seq = records[-1].seq
        assert source.send_limit == records[-1].seq

    try:
        anyio.run(main)
    finally:
        source.close()
