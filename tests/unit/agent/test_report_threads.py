"""Commit reports added from apply threads while the link sends and the master takes them on the
event loop (a target's checkpoint no longer waits for the loop): on real outbox files, with a
memory bound small enough that most wait on disk, every report reaches the master once, each
thread's in its order, and the outbox is empty at the end. And a report from another thread
wakes the link's writer, which waits on an event of the loop."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import anyio
import pytest

from relaysync.agent import outbox as outbox_module
from relaysync.agent._report_runs import _merge
from relaysync.agent.outbox import ReportOutbox
from relaysync.agent.report_queue import ReportQueue
from relaysync.protocol.messages import CommitRecord, CommitReport
from tests.unit.agent._offline_link import offline_link

SRC, TGT = "a" * 64, "b" * 64
THREADS, EACH = 4, 300
WAIT_S = 60.0


def _report(thread: int, n: int) -> CommitReport:
    records = tuple(
        CommitRecord(seq=n, op="write", path=f"t{thread}/{n}/{i}".ljust(300, "x"), size=i)
        for i in range(20)
    )
    return CommitReport(
        mapping_id=thread + 1, source_node=SRC, target_node=TGT, watermark=n, records=records
    )


def test_reports_added_from_threads_while_the_loop_sends_arrive_once_in_order(
    tmp_path: Path,
) -> None:
    box = ReportOutbox(tmp_path / "outbox", TGT, segment_bytes=64 * 1024)
    box.open()
    queue = ReportQueue(box, max_bytes=256 * 1024)  # a few dozen held: the rest on disk only
    taken: dict[int, list[int]] = {t + 1: [] for t in range(THREADS)}

    def apply_thread(t: int) -> None:
        for n in range(EACH):
            queue.add(_report(t, n))

    async def link() -> None:
        threads = [threading.Thread(target=apply_thread, args=(t,)) for t in range(THREADS)]
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + WAIT_S
        while sum(map(len, taken.values())) < THREADS * EACH:
            assert time.monotonic() < deadline, "not every report reached the master"
            if not (queue.unsent or queue.read_back()):
                await anyio.sleep(0.001)
                continue
            for item in queue.hold_next(64, _merge):
                for part in item.parts or (item,):
                    taken[part.report.mapping_id].append(part.report.watermark)
            await anyio.sleep(0)  # the master's answer: the threads add meanwhile
            queue.taken(queue.acked + len(queue.unacked))
        for thread in threads:
            thread.join(WAIT_S)

    anyio.run(link)
    assert taken == {t + 1: list(range(EACH)) for t in range(THREADS)}
    assert queue.dropped == 0 and queue.pending == 0
    box.close()
    reopened = ReportOutbox(tmp_path / "outbox", TGT, segment_bytes=64 * 1024)
    assert reopened.open() == [] and not reopened.unread  # nothing left to send again
    reopened.close()


def test_a_report_from_another_thread_wakes_the_writer() -> None:
    link = offline_link()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(link.serve)
            wake = link._wake  # what the write loop waits on
            assert not wake.is_set()
            await anyio.to_thread.run_sync(link.report, _report(0, 1))  # as an apply thread
            with anyio.fail_after(WAIT_S):
                await wake.wait()
            assert [q.report.watermark for q in link.reports.unsent] == [1]
            tg.cancel_scope.cancel()

    anyio.run(main)


def test_a_safe_report_is_synced_before_its_thread_goes_on_whoever_took_its_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two `safe` targets' apply threads: A's report is in a segment that B's report closed, and
    the outbox hands a closed segment to the first sync that asks: B's. A's own sync must not
    return (A would save its watermark and acknowledge) before B's sync of that segment is done."""
    box = ReportOutbox(tmp_path / "outbox", TGT, segment_bytes=9000)  # one report a segment
    box.open()
    link = offline_link(box)
    synced: list[int] = []  # the inode numbers of the segments synced, in order
    b_syncing, b_may_go = threading.Event(), threading.Event()

    def fdatasync(fd: int) -> None:
        if threading.current_thread().name == "B" and not b_syncing.is_set():
            b_syncing.set()
            b_may_go.wait(WAIT_S)  # B's disk is slow
        synced.append(os.fstat(fd).st_ino)

    monkeypatch.setattr(outbox_module.os, "fdatasync", fdatasync)
    monkeypatch.setattr(outbox_module.os, "fsync", lambda fd: None)
    link.report(_report(0, 1))  # A's, in the first segment
    first = os.stat(next((tmp_path / "outbox").rglob("*.outbox"))).st_ino

    def b() -> None:
        link.report(_report(1, 1))  # starts the second segment: the first is handed over
        link.sync_reports()

    b_thread = threading.Thread(target=b, name="B")
    b_thread.start()
    assert b_syncing.wait(WAIT_S)
    threading.Timer(0.2, b_may_go.set).start()  # A asks meanwhile
    link.sync_reports()  # A's
    assert first in synced, "A went on before its report's segment was synced"
    b_thread.join(WAIT_S)
    box.close()
