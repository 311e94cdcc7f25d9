"""The kernel's inotify watch limit, lowered for real: the watcher says so and scans instead."""

from __future__ import annotations

import glob
import logging
from pathlib import Path

import anyio
import pytest

from relaysync.watch.filters import PathFilter
from relaysync.watch.watcher import FsEvent, Watcher

KNOB = Path("/proc/sys/fs/inotify/max_user_watches")


def _watches_in_use() -> int:
    """Inotify watches held by every process now (root's, in practice, on this machine)."""
    count = 0
    for info in glob.glob("/proc/[0-9]*/fdinfo/*"):
        try:
            count += Path(info).read_text().count("inotify wd:")
        except OSError:
            continue
    return count


@pytest.mark.serial
def test_watch_limit_is_reported_and_unwatched_dirs_are_scanned(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    for i in range(40):
        (tmp_path / f"d{i}").mkdir()
    saved = KNOB.read_text()
    caplog.set_level(logging.WARNING, logger="relaysync.watch.watcher")

    async def main() -> tuple[list[str], list[FsEvent]]:
        send, receive = anyio.create_memory_object_stream[list[FsEvent]](100)
        watcher = Watcher(tmp_path, PathFilter(), unwatched_scan_interval_s=0.3)
        async with anyio.create_task_group() as tg:
            KNOB.write_text(f"{_watches_in_use() + 10}\n")
            try:
                await tg.start(watcher.serve, send)
            finally:
                KNOB.write_text(saved)  # only this watcher's start needed the low limit
            unwatched = watcher.unwatched
            with anyio.fail_after(10):
                events = await receive.receive()
            tg.cancel_scope.cancel()
        return unwatched, events

    unwatched, events = anyio.run(main)
    assert unwatched, "some directories should have been left unwatched"
    assert "max_user_watches" in caplog.text
    assert {e.kind for e in events} == {"rescan"}
    assert {e.path for e in events} >= set(unwatched)
