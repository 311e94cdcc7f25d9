"""Parts of the job-log writer (master/joblog.py): a run of its spool, its subscribers, its
failure logging, the N:M conflicts of a batch, and the split of a piece of a batch the store
keeps refusing."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import anyio
import msgspec

from relaysync.errors import StoreError
from relaysync.master.events import EventBus, EventType
from relaysync.master.store._journals import other_journal
from relaysync.master.store.store import Store
from relaysync.protocol.messages import CommitReport
from relaysync.purge.holds import PurgeHold, when_queued

logger = logging.getLogger("relaysync.master.joblog")  # the writer's own messages


@dataclass
class Spooling:
    """A run of the spool, from the bound passed (or a start with a spool left) to drained."""

    started: float  # time.monotonic()
    replayed: int = 0  # records left by the last run
    spooled: int = 0  # records appended since
    failing: bool = False  # the last append failed (logged once)


@dataclass
class LiveWatermarks:
    """Per (mapping, source, target): the highest watermark reported, in the source journal it
    counts in (a report in another journal starts afresh: the journal was recreated)."""

    seqs: dict[tuple[int, str, str], int] = field(default_factory=dict)
    journals: dict[tuple[int, str, str], str] = field(default_factory=dict)

    def observe(self, report: CommitReport) -> None:
        key = (report.mapping_id, report.source_node, report.target_node)
        if other_journal(report.journal_id, self.journals.get(key, "")):
            self.seqs.pop(key, None)  # from 0 in the new journal
        self.journals[key] = report.journal_id or self.journals.get(key, "")
        if report.watermark > self.seqs.get(key, 0):
            self.seqs[key] = report.watermark


@dataclass
class Subscribers:
    """The callbacks told of every commit report: as it arrives, and again as it is read back
    from the spool of a previous run (that run told its own subscribers, and what they made of
    it, a purge not yet queued, died with it). A subscriber may return a hold: the report is
    acknowledged, once written to the store, only when the hold is done (purge/holds.py)."""

    callbacks: list[Callable[[CommitReport], PurgeHold | None]] = field(default_factory=list)
    # each a hold done once the subscriber is done with every report told so far
    barriers: list[Callable[[], PurgeHold | None]] = field(default_factory=list)

    def add(
        self,
        callback: Callable[[CommitReport], PurgeHold | None],
        barrier: Callable[[], PurgeHold | None] | None,
    ) -> None:
        self.callbacks.append(callback)
        if barrier is not None:
            self.barriers.append(barrier)

    def tell(self, report: CommitReport) -> tuple[PurgeHold, ...]:
        holds: list[PurgeHold] = []
        for callback in self.callbacks:
            try:
                hold = callback(report)
            except Exception:  # a subscriber's bug must not lose the job log
                logger.exception("commit report subscriber failed")
                continue
            if hold is not None:
                holds.append(hold)
        return tuple(holds)

    def barrier(self) -> list[PurgeHold]:
        """Holds done once the subscribers are done with every report told so far."""
        holds = []
        for barrier in self.barriers:
            try:
                hold = barrier()
            except Exception:  # a subscriber's bug must not lose the job log
                logger.exception("commit report subscriber failed")
                continue
            if hold is not None:
                holds.append(hold)
        return holds


@dataclass
class ReadBackPurges:
    """The purges of the reports read back from the spool, not all queued yet: the spool
    keeps those reports (it is not released) until they are, or for at most `wait_s`.

    Their agents were told they were taken once spooled; released from the spool before the
    purger queued their purges, a kill of the master lost those (the next run has neither the
    spool nor the purger's memory to re-tell)."""

    wait_s: float
    holds: list[PurgeHold] = field(default_factory=list)
    since: float | None = None  # time.monotonic() of the first release held back
    lapsed: bool = False  # the last wait ran out: none more until a hold is done again

    def wait_for(self, holds: Sequence[PurgeHold], wake: Callable[[], None]) -> None:
        """Hold the spool for `holds` too; `wake` the writer once they are done."""
        self.holds += holds
        when_queued(holds, wake)

    def queued(self) -> bool:
        """Whether the spool may be released: every hold done, or held back past `wait_s`
        (logged: a purger that does not queue must not keep the spool growing), or the last
        wait ran out and no hold was done since (each batch waiting 60 s would drain the spool
        slower than reports come)."""
        done = [h for h in self.holds if h.done]
        self.holds = [h for h in self.holds if not h.done]
        self.lapsed = self.lapsed and not done and bool(self.holds)
        if not self.holds or self.lapsed:
            self.holds, self.since = [], None
            return True
        now = time.monotonic()
        if self.since is None:
            self.since = now
            return False
        if now - self.since < self.wait_s:
            return False
        logger.warning(
            "job log: the purger has not queued the purges of reports read back from the spool "
            "after %.0f s; releasing them from the spool (a kill of the master before it "
            "queues them loses those purges)",
            now - self.since,
        )
        self.holds, self.since, self.lapsed = [], None, True
        return True


class OnceWhileFailing:
    """A spool operation retried at every batch (a full disk fails each): its failure logged
    once until it works again (a drain of 400 batches logged 756 warnings), then that."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.failures = 0  # in a row

    def failed(self, exc: Exception) -> None:
        self.failures += 1
        if self.failures == 1:
            log_spool_failure(
                logging.WARNING,
                exc,
                "job log: %s failed, will retry at each batch (logged once until it works): %s",
                self.what,
            )

    def worked(self) -> None:
        if self.failures:
            logger.warning("job log: %s works again (%s failures)", self.what, self.failures)
        self.failures = 0


def log_failure(exc: Exception, message: str, *args: object) -> None:
    """A store failure as a warning; anything else (a bug) with its traceback."""
    expected = isinstance(exc, StoreError)
    logger.warning(message, *args, exc if expected else repr(exc), exc_info=not expected)


def log_spool_failure(level: int, exc: Exception, message: str, *args: object) -> None:
    """A disk failure (OSError) as it is; anything else (a bug) with its traceback."""
    expected = isinstance(exc, OSError)
    logger.log(level, message, *args, exc if expected else repr(exc), exc_info=not expected)


async def record_conflicts(store: Store, events: EventBus, batch: list[CommitReport]) -> None:
    """Keep the N:M jobs' conflicts with their job and publish each (after the job log write);
    logs its own failures, never raises."""
    try:
        conflicts = await anyio.to_thread.run_sync(store.nm_jobs.record_conflicts, batch)
    except Exception as exc:  # the change rows are written; only the conflict list misses these
        log_failure(exc, "conflict log write failed: %s")
        return
    for c in conflicts:
        events.publish(
            EventType.CONFLICT,
            job=c.job,
            job_id=c.job_id,
            mapping_id=c.mapping_id,
            target=c.target_node,
            path=c.path,
            op=c.op,
            reason=c.reason,
            winner=c.winner_node,
            loser=c.loser_node,
        )


def halves(piece: list[CommitReport]) -> list[list[CommitReport]] | None:
    """A piece split in two: its reports, or a lone report's records; None: a single record.

    Each half of a report carries its watermark: writing it again changes nothing."""
    if len(piece) > 1:
        middle = len(piece) // 2
        return [piece[:middle], piece[middle:]]
    (report,) = piece
    if len(report.records) <= 1:
        return None
    middle = len(report.records) // 2
    return [
        [msgspec.structs.replace(report, records=report.records[:middle])],
        [msgspec.structs.replace(report, records=report.records[middle:])],
    ]


def first_records(reports: list[CommitReport], records: int) -> tuple[list[CommitReport], int]:
    """The first reports of `reports` that hold about `records` records (at least one report),
    and how many records they hold."""
    taken = held = 0
    while taken < len(reports) and (taken == 0 or held < records):
        held += len(reports[taken].records)
        taken += 1
    return reports[:taken], held
