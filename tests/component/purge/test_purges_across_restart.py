"""A purge survives a restart of the master: commit reports a run spooled while its store took
no writes were acknowledged to the agents (never sent again), and the purge that run released
for them lived only in its purger's memory; the next run tells its purger of them as it reads
them back from the spool, so the cache comes up to date."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from sqlalchemy.exc import OperationalError
from tests.component.purge.conftest import O1, O2, SOURCE, Harness

from relaysync.errors import StoreError
from relaysync.master.events import EventBus
from relaysync.master.joblog import JobLogWriter
from relaysync.master.store import Store
from relaysync.protocol.messages import CommitRecord, CommitReport
from relaysync.purge.jobs import PurgeItem
from relaysync.purge.purger import Purger

pytestmark = pytest.mark.anyio

BOUND_S = 10.0  # the job log's first flush (0.5 s) and the purge, with room for a loaded CI


class Outage:
    """The store taking no writes (a full disk, a database restarting) while `down`: the job
    log's and the purge queue's writes fail as they do then (the seam: the store)."""

    def __init__(self, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
        self.down = True
        real_record, real_enqueue = store.record_commit_reports, store.enqueue_purges

        def refuse() -> None:
            cause = OperationalError("INSERT ...", {}, Exception("database or disk is full"))
            raise StoreError(f"write: {cause}") from cause

        def record(reports: list[CommitReport]) -> None:
            if self.down:
                refuse()
            real_record(reports)

        def enqueue(items: list[PurgeItem]) -> object:
            if self.down:
                refuse()
            return real_enqueue(items)

        monkeypatch.setattr(store, "record_commit_reports", record)
        monkeypatch.setattr(store, "enqueue_purges", enqueue)


@pytest.fixture
def outage(harness: Harness, monkeypatch: pytest.MonkeyPatch) -> Iterator[Outage]:
    outage = Outage(harness.store, monkeypatch)
    yield outage
    outage.down = False


def _report(harness: Harness, target: str, rel: str) -> CommitReport:
    record = CommitRecord(seq=1, op="write", path=f"{harness.site.root}/{rel}")
    return CommitReport(
        mapping_id=harness.mapping_id,
        source_node=SOURCE,
        target_node=target,
        watermark=1,
        records=(record,),
    )


async def _first_run(harness: Harness, spool: Path) -> Purger:
    """The run that dies: both origins' reports spooled and taken, its purger (never served,
    its sites loaded) holding the released change in memory; returns that purger."""
    purger = Purger(harness.store)
    purger.reload_sites()
    writer = JobLogWriter(harness.store, EventBus(), spool_dir=spool, max_queued_records=1)
    writer.subscribe(purger.on_commit_report)
    taken: list[str] = []
    async with anyio.create_task_group() as tg:
        await tg.start(writer.serve)
        for target in (O1, O2):
            writer.add(_report(harness, target, "b.html"), taken=lambda t=target: taken.append(t))
        await harness.until(lambda: len(taken) == 2, what="both reports taken (spooled)")
        tg.cancel_scope.cancel()  # a stop loses the purger's memory as a kill -9 does
    return purger


async def test_a_purge_released_while_the_store_was_down_survives_a_restart(
    harness: Harness, outage: Outage, tmp_path: Path
) -> None:
    harness.write("b.html", b"b-v1")
    harness.warm("b.html")
    harness.write("b.html", b"b-v2")
    first = await _first_run(harness, tmp_path / "spool")
    assert len(first._released) == 1  # released, never queued: the store took no writes
    assert harness.store.queued_purges() == 0
    outage.down = False
    # the next run: the running purger (sites loaded) subscribes before the job log starts
    writer = JobLogWriter(harness.store, EventBus(), spool_dir=tmp_path / "spool")
    writer.subscribe(harness.purger.on_commit_report)
    async with anyio.create_task_group() as tg:
        await tg.start(writer.serve)
        await harness.until_served("b.html", (200, b"b-v2"), timeout_s=BOUND_S)
        assert writer.spooled_records == 0
        tg.cancel_scope.cancel()
