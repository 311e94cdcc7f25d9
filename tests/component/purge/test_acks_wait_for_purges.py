"""A commit report written to the store is acknowledged only once the purges it released are in
the purge queue (purge/holds.py): acknowledged at the write, a kill of the master before its
purger queued them lost the purge for good (the agent had forgotten the report, the store does
not hold the purger's memory), and the cache served the old bytes until the file changed again.

The purge queue's writes fail here while the job log's succeed (the seam: the store's
enqueue_purges), which holds a released change in the purger's memory as long as the test needs.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import msgspec
import pytest
from sqlalchemy.exc import OperationalError
from tests.component.purge.conftest import O1, O2, SOURCE, WAIT_S, Harness

from relaysync.errors import StoreError
from relaysync.master.events import EventBus
from relaysync.master.joblog import JobLogWriter
from relaysync.protocol.messages import CommitRecord, CommitReport
from relaysync.purge import intake as intake_module
from relaysync.purge.jobs import PurgeItem
from relaysync.purge.ordering import Released
from relaysync.purge.purger import Purger

pytestmark = pytest.mark.anyio


class QueueRefused:
    """The store's purge queue takes no writes while `down`; the job log's writes go on."""

    def __init__(self, harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
        self.down = True
        self.refused = 0
        real = harness.store.enqueue_purges

        def enqueue(items: list[PurgeItem]) -> object:
            if self.down:
                self.refused += 1
                cause = OperationalError("INSERT ...", {}, Exception("database is locked"))
                raise StoreError(f"write: {cause}") from cause
            return real(items)

        monkeypatch.setattr(harness.store, "enqueue_purges", enqueue)


@pytest.fixture
def queue_refused(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> Iterator[QueueRefused]:
    refused = QueueRefused(harness, monkeypatch)
    yield refused
    refused.down = False


def _report(harness: Harness, target: str, rel: str, seq: int = 1) -> CommitReport:
    record = CommitRecord(seq=seq, op="write", path=f"{harness.site.root}/{rel}")
    return CommitReport(
        mapping_id=harness.mapping_id,
        source_node=SOURCE,
        target_node=target,
        watermark=seq,
        records=(record,),
        journal_id="j1",
    )


class _Acks(dict[str, int]):
    """The agent's side: the reports acknowledged, by target, each with how many purges the
    purger had queued by then (`queued`, counted by `_job_log`: the store's queue falls as the
    caches take them, and a quick cache left it at 0 before an acknowledgement was noted)."""

    queued = 0

    def taken(self, target: str) -> Callable[[], None]:
        """The callback noting that the report of `target` was acknowledged."""
        return lambda: self.setdefault(target, self.queued)


@asynccontextmanager
async def _job_log(harness: Harness, acks: _Acks) -> AsyncIterator[JobLogWriter]:
    """A job-log writer serving, told to the harness's purger (no spool); the purges the purger
    queues are counted in `acks.queued`."""
    purger, real_enqueue = harness.purger, harness.purger._enqueue

    async def enqueue(items: list[PurgeItem]) -> None:
        await real_enqueue(items)
        acks.queued += len(items)

    purger._enqueue = enqueue  # type: ignore[method-assign]
    writer = JobLogWriter(harness.store, EventBus())
    writer.subscribe(harness.purger.on_commit_report)
    async with anyio.create_task_group() as tg:
        await tg.start(writer.serve)
        try:
            yield writer
        finally:
            tg.cancel_scope.cancel()
            del purger._enqueue  # type: ignore[method-assign]


async def test_a_report_is_acknowledged_once_its_purge_is_queued_not_at_its_write(
    harness: Harness, queue_refused: QueueRefused
) -> None:
    harness.write("a.html", b"a")  # the caches fetch what they are told to refresh
    acked = _Acks()
    async with _job_log(harness, acked) as writer:
        for target in (O1, O2):
            writer.add(_report(harness, target, "a.html"), taken=acked.taken(target))
        await harness.until(
            lambda: writer.written_reports == 2 and queue_refused.refused >= 2,
            what="both reports written, the purge queue refusing their purge twice",
        )
        assert acked == {}  # in the store, but the purge lives in the purger's memory only
        queue_refused.down = False
        await harness.until(lambda: len(acked) == 2, what="both reports acknowledged")
        assert min(acked.values()) >= 1  # the purge was queued before either was


async def test_a_report_not_yet_in_the_purge_queue_is_sent_again_and_purged_after_a_kill(
    harness: Harness, queue_refused: QueueRefused
) -> None:
    harness.write("b.html", b"b-v1")
    harness.warm("b.html")
    harness.write("b.html", b"b-v2")
    reports = {t: _report(harness, t, "b.html") for t in (O1, O2)}
    # the run that dies: its purger (served: it tries to queue) holds the released change
    first = Purger(harness.store, retry_min_s=0.05, retry_max_s=0.2)
    writer = JobLogWriter(harness.store, EventBus())
    writer.subscribe(first.on_commit_report)
    acked = _Acks()
    async with anyio.create_task_group() as tg:
        await tg.start(first.serve)
        await tg.start(writer.serve)
        for target, report in reports.items():
            writer.add(report, taken=acked.taken(target))
        await harness.until(
            lambda: writer.written_reports == 2 and queue_refused.refused >= 2,
            what="both reports written, their purge not queued",
        )
        tg.cancel_scope.cancel()  # its memory is lost as a kill -9 loses it
    assert acked == {} and harness.store.queued_purges() == 0
    queue_refused.down = False
    # the agents send again what was not acknowledged, to the next run (the running harness)
    async with _job_log(harness, acked) as writer:
        for target, report in reports.items():
            if target not in acked:
                writer.add(report, taken=acked.taken(target))
        await harness.until_served("b.html", (200, b"b-v2"), timeout_s=WAIT_S)
        await harness.until(lambda: len(acked) == 2, what="both reports acknowledged")


async def test_a_report_sent_again_waits_for_the_queueing_of_the_change_it_names(
    harness: Harness, queue_refused: QueueRefused
) -> None:
    """After a dropped link the agent sends its unacknowledged reports again to the same run:
    the change they name is released already (nothing new to release), but not queued yet, so
    the report sent again is not acknowledged before it is."""
    harness.write("c.html", b"c")
    acked = _Acks()
    async with _job_log(harness, acked) as writer:
        for target in (O1, O2):
            writer.add(_report(harness, target, "c.html"))  # the first session's, never acked
        await harness.until(
            lambda: writer.written_reports == 2 and queue_refused.refused >= 1,
            what="both reports written, their purge not queued",
        )
        writer.add(_report(harness, O1, "c.html"), taken=acked.taken(O1))
        await harness.until(lambda: writer.written_reports == 3, what="the one sent again written")
        assert acked == {}
        queue_refused.down = False
        await harness.until(lambda: O1 in acked, what="the report sent again acknowledged")
        assert acked[O1] >= 1


async def test_reports_read_back_from_the_spool_stay_there_until_their_purge_is_queued(
    harness: Harness, queue_refused: QueueRefused, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Spooled while the store was down, the reports were acknowledged (the spool keeps them);
    read back and written once it is up, the spool forgot them while their purge could still
    wait in the purger's memory (its queue write failing, or its retry not yet due): killed
    then, the next run had neither to tell its purger of."""
    harness.write("d.html", b"d-v1")
    harness.warm("d.html")
    harness.write("d.html", b"d-v2")
    store_down = [True]
    real_record = harness.store.record_commit_reports

    def record(reports: list[CommitReport]) -> None:
        if store_down[0]:
            cause = OperationalError("INSERT ...", {}, Exception("database or disk is full"))
            raise StoreError(f"write: {cause}") from cause
        real_record(reports)

    monkeypatch.setattr(harness.store, "record_commit_reports", record)
    first = Purger(harness.store, retry_min_s=0.05, retry_max_s=0.2)
    first.reload_sites()
    writer = JobLogWriter(
        harness.store, EventBus(), spool_dir=tmp_path / "spool", max_queued_records=1
    )
    writer.subscribe(first.on_commit_report, barrier=first.barrier)
    acked = _Acks()
    async with anyio.create_task_group() as tg:
        await tg.start(first.serve)
        await tg.start(writer.serve)
        for target in (O1, O2):
            writer.add(_report(harness, target, "d.html"), taken=acked.taken(target))
        await harness.until(lambda: len(acked) == 2, what="both reports spooled and acknowledged")
        store_down[0] = False  # the job log's writes go through; the purge queue's do not yet
        await harness.until(lambda: writer.written_reports >= 2, what="both read back, written")
        await harness.until(lambda: queue_refused.refused >= 3, what="the purge still not queued")
        assert writer.spooled_records == 2  # kept: the purger has not queued their purge
        tg.cancel_scope.cancel()  # its memory is lost as a kill -9 loses it
    queue_refused.down = False
    writer = JobLogWriter(harness.store, EventBus(), spool_dir=tmp_path / "spool")
    writer.subscribe(harness.purger.on_commit_report, barrier=harness.purger.barrier)
    async with anyio.create_task_group() as tg:
        await tg.start(writer.serve)
        await harness.until_served("d.html", (200, b"d-v2"), timeout_s=WAIT_S)
        await harness.until(lambda: writer.spooled_records == 0, what="the spool released")
        tg.cancel_scope.cancel()


async def test_an_origins_report_waits_for_the_other_origins_and_goes_when_its_site_is_gone(
    harness: Harness,
) -> None:
    """The change waits in the commit tracker for o2 (up, not committed yet): o1's report is
    not acknowledged; once the site is deleted there is nothing to purge, and it is."""
    acked = _Acks()
    async with _job_log(harness, acked) as writer:
        writer.add(_report(harness, O1, "e.html"), taken=acked.taken(O1))
        await harness.until(lambda: writer.written_reports == 1, what="o1's report written")
        assert acked == {} and harness.purger.tracker.pending == 1
        harness.store.delete_site(harness.site.id)
        await anyio.to_thread.run_sync(harness.purger.reload_sites)
        await harness.until(lambda: O1 in acked, what="o1's report acknowledged")
        assert harness.purger.tracker.pending == 0


async def test_a_change_the_purger_fails_to_plan_does_not_hold_back_acknowledgements(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug planning one change (logged, retried behind the others) lets its reports go:
    sent again they would meet the same bug, and the acknowledgements are cumulative, so
    every later report of those agents would wait for ever."""
    harness.write("fine.html", b"fine")
    real_plan = harness.purger._plan

    async def plan(site: object, change: Released) -> object:
        if change.path.endswith("/poison.html"):
            raise RuntimeError("a bug in planning")
        return await real_plan(site, change)  # type: ignore[arg-type]

    monkeypatch.setattr(harness.purger, "_plan", plan)
    acked = _Acks()
    async with _job_log(harness, acked) as writer:
        for target in (O1, O2):
            report = _report(harness, target, "poison.html")
            writer.add(report, taken=acked.taken(f"{target}-poison"))
        await harness.until(lambda: len(acked) == 2, what="the poisoned change's reports acked")
        for target in (O1, O2):
            report = _report(harness, target, "fine.html", seq=2)
            writer.add(report, taken=acked.taken(f"{target}-fine"))
        await harness.until(lambda: len(acked) == 4, what="the later reports acknowledged")
        assert min(acked[f"{t}-fine"] for t in (O1, O2)) >= 1  # once their purge was queued


async def test_a_report_the_purger_fails_to_take_in_whole_still_waits_for_what_it_released(
    harness: Harness, queue_refused: QueueRefused, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug in the tracker at the report's second change: the first, released, is queued
    before the report is acknowledged (was: the subscriber raised, no hold came back, and the
    report was acknowledged at its write)."""
    real_ready, calls = harness.purger.tracker._ready, [0]

    def ready(*args: object) -> bool:
        calls[0] += 1
        if calls[0] == 2:
            raise RuntimeError("a bug in the tracker")
        return real_ready(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(harness.purger.tracker, "_ready", ready)
    harness.write("f1.html", b"f1")
    records = tuple(
        CommitRecord(seq=s, op="write", path=f"{harness.site.root}/f{s}.html") for s in (1, 2)
    )
    report = CommitReport(
        mapping_id=harness.mapping_id,
        source_node=SOURCE,
        target_node=O1,
        watermark=2,
        records=records,
        journal_id="j1",
    )
    harness.store.set_server_state(O2, "down", time.time())  # o1's commit releases alone
    harness.purger._states = {O1: "up", O2: "down"}  # (as the purger's state loop reads it)
    hold = harness.purger.on_commit_report(report)
    assert hold is not None and not hold.done
    await harness.until(lambda: queue_refused.refused >= 1, what="its purge refused once")
    assert not hold.done
    queue_refused.down = False  # the second change, left waiting by the bug, goes in a sweep
    await harness.until(lambda: hold.done, what="its released changes queued")


async def test_a_failure_queueing_what_was_planned_keeps_the_reports_waiting(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug after planning (here in pruning the bans) is no planning failure of the change at
    the head: its reports wait until it is queued (was: the head's reports were acknowledged
    and it was put behind the others, whatever failed)."""
    harness.write("g.html", b"g")
    failing, failures = [True], [0]
    real_prune = intake_module.prune_bans

    def prune(items: list[PurgeItem]) -> list[PurgeItem]:
        if failing[0]:
            failures[0] += 1
            raise RuntimeError("a bug after planning")
        return real_prune(items)

    monkeypatch.setattr(intake_module, "prune_bans", prune)
    acked = _Acks()
    async with _job_log(harness, acked) as writer:
        for target in (O1, O2):
            writer.add(_report(harness, target, "g.html"), taken=acked.taken(target))
        await harness.until(
            lambda: writer.written_reports == 2 and failures[0] >= 2,
            what="both reports written, queueing their purge failing",
        )
        assert acked == {}
        failing[0] = False
        await harness.until(lambda: len(acked) == 2, what="both reports acknowledged")
        assert min(acked.values()) >= 1  # once the purge was queued


async def test_a_change_whose_planning_keeps_failing_on_the_store_lets_the_others_go(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A store error listing the paths under a deleted directory (for the cache without bans;
    on PostgreSQL a statement timeout over millions of rows fails every time) kept the change
    at the head of the intake for as long as it lasted: no later purge of any site queued, no
    later report acknowledged. Now it is set aside and planned again apart, the changes behind
    it go, and it goes (and its reports) once the store answers."""
    harness.write("fine.html", b"fine")
    real_under, tries, failing = harness.store.changed_paths_under, [0], [True]

    def under(mapping_id: int, prefix: str) -> list[str]:
        if failing[0] and prefix.endswith("/stuck"):
            tries[0] += 1
            cause = OperationalError("SELECT ...", {}, Exception("statement timeout"))
            raise StoreError(f"read: {cause}") from cause
        return real_under(mapping_id, prefix)

    monkeypatch.setattr(harness.store, "changed_paths_under", under)
    acked = _Acks()
    stuck = CommitRecord(seq=1, op="delete", path=f"{harness.site.root}/stuck")
    async with _job_log(harness, acked) as writer:
        for target in (O1, O2):
            report = _report(harness, target, "fine.html", seq=2)
            writer.add(
                msgspec.structs.replace(report, records=(stuck,), watermark=1),
                taken=acked.taken(f"{target}-stuck"),
            )
            writer.add(report, taken=acked.taken(f"{target}-fine"))
        await harness.until(
            lambda: {f"{t}-fine" for t in (O1, O2)} <= acked.keys(),
            what="the later change's reports acknowledged while the first one's planning fails",
        )
        assert min(acked[f"{t}-fine"] for t in (O1, O2)) >= 1  # once its purge was queued
        assert not {f"{t}-stuck" for t in (O1, O2)} & acked.keys()
        assert tries[0] >= 2  # its first try, and again apart
        failing[0] = False
        await harness.until(lambda: len(acked) == 4, what="the set-aside change queued in turn")
    await harness.until_served("fine.html", (200, b"fine"))
