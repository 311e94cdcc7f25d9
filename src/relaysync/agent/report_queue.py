"""The report queue: an agent's commit reports for the master, in order, bounded, and on disk.

Each report is appended to the outbox (agent/outbox.py) before it is queued, so before the
source hears of the commit (the receiver's Ack waits on it), and forgotten there once the
master has taken it (`taken`), the link sent it to a master that does not acknowledge
(`sent_to_unacknowledging`), or the bound dropped it. A restarted agent queues what the outbox still holds
first. Without an outbox (or while appends fail: a full disk, logged) reports are kept in
memory only, as before.

Three bounds. In memory, the reports held weigh at most `max_bytes` (MAX_QUEUED_REPORT_BYTES,
estimated by agent/_report_memory.py; one report always fits): a report of many records with
long paths holds MBs, and 100,000 of them, while the master is down, held GBs. Past it, reports
on disk stay there only (`spilled`), and are read back in order as the master takes those held,
READ_BACK_STEP_BYTES at a time (`_refill`, `read_back`: this runs on the event loop): none is
lost. A read back that fails (EMFILE, EIO) is tried again at the next ack, report or session
and, while none is held (`stalled`), by the link every READ_BACK_RETRY_S.
Only a report the outbox could not keep (no outbox, a full disk) makes the oldest held go, as
past the count. On disk, the outbox's segments weigh at most `max_disk_bytes` (MAX_OUTBOX_BYTES,
the agent's `report_outbox_max_mb`): past it the oldest reports go until their segment is
deleted (`_fit_disk`), as past the count, rather than fill the agent's disk while the master is
down. On disk and in memory together, past MAX_QUEUED_REPORTS the oldest report is
dropped, sent or not, with an error (a message the link merged from several: its first report
only, the message keeps the others and its number in the session; the count, `pending` and
`dropped` are of reports, not messages); the session's count of messages goes on, so the
master's `ReportsTaken(upto)` still names the same ones. Every report dropped is noted
(`lost`), the note saved before the outbox forgets the report (`_consume_dropped`; a kill in
between lost both: past the disk bound, once for a segment's worth of drops); a report dropped
after it was sent (of `unacked`) is noted only if the session ends before the master takes its
message (`LostReports.pending`: it reached the master, or it may not have), and once the master takes reports again a marker per mapping follows the others, so
that it purges the sites of what they named (agent/_lost_reports.py).

Thread-safe: each public method holds `lock` (reentrant). A target's apply thread adds its
commit reports itself, on disk before it saves the watermark that they cover, without waiting for
the event loop (busy reading the next batch: a wait per checkpoint was 7 % of a 10,000 small
files copy); the link does the rest on the loop. Several calls that must go together (take a
batch and hold it as sent) are made holding `lock`.
"""

from __future__ import annotations

import collections
import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Concatenate, NamedTuple, ParamSpec, TypeVar

import msgspec

from relaysync.constants import READ_BACK_RETRY_S
from relaysync.errors import ProtocolError
from relaysync.protocol.messages import ENCODER, CommitReport

from ._lost_reports import LostReports
from ._outbox_segments import HEADER
from ._report_memory import held_bytes
from .outbox import ReportOutbox

logger = logging.getLogger(__name__)

FRAME_HEADER_BYTES = HEADER.size  # before each report in the outbox

# Reports kept, sent or not, until the master took them; the oldest are dropped past this
# (watermarks come again with the next report, but the dropped records miss in the job log).
# It bounds the outbox on disk and the master's catch-up; memory has its own bound, below.
MAX_QUEUED_REPORTS = 100_000
# Reports held in memory, as agent/_report_memory.py estimates them (1,250 B a typical
# one-record report, 4.3 MB a run of records of MAX_REPORT_BYTES): about as many typical reports
# as the count bound (107,000), or 31 of the largest. The rest waits on disk; the link sends 64 at a
# time and each batch is taken within a round trip, so this window keeps it busy.
MAX_QUEUED_REPORT_BYTES = 128 * 1024 * 1024
# Reports read back from disk at a time (pread, CRC and decode on the event loop, ~8 ms a MiB):
# an ack that freed the memory of 64 large reports read ~37 MB back at once, blocking the loop
# 70-330 ms; now the link's writer reads the rest a step at a time between its sends.
READ_BACK_STEP_BYTES = 1024 * 1024
# The outbox on disk, by default (the agent's `report_outbox_max_mb`): the count bound alone let
# it grow to 100,000 reports of up to 2 MiB (200 GiB) while the master was down, filling the
# agent's disk. 4 GiB holds ~10 million typical reports (~430 B on disk each) or 2,000 of the
# largest; past it the oldest reports go, a segment at a time (agent/outbox.py SEGMENT_BYTES).
MAX_OUTBOX_BYTES = 4 * 1024 * 1024 * 1024
READ_BACK_WARN_S = 60.0  # a read back failing on and on is warned of this seldom


_P = ParamSpec("_P")
_R = TypeVar("_R")


def _locked(
    method: Callable[Concatenate[ReportQueue, _P], _R],
) -> Callable[Concatenate[ReportQueue, _P], _R]:
    """A public method of the queue, run holding its lock (see the module's docstring)."""

    @functools.wraps(method)
    def locked(self: ReportQueue, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with self.lock:
            return method(self, *args, **kwargs)

    return locked


class Queued(NamedTuple):
    """A report in the queue, how many outbox frames it stands for (merged: several; kept in
    memory only: none), what it is estimated to hold in memory, how many reports it stands
    for (merged: several; counted by `pending`, `dropped` and MAX_QUEUED_REPORTS), and, merged,
    the items it was merged from, in order (a drop takes the first alone: `_split_first`)."""

    report: CommitReport
    frames: int
    held_bytes: int = 0
    reports: int = 1
    parts: tuple[Queued, ...] = ()


class ReportQueue:
    """Reports not sent yet (`unsent`), then sent on this session and not taken (`unacked`),
    held in memory; after them, those `spilled`: on disk only, or kept in memory only."""

    def __init__(
        self,
        outbox: ReportOutbox | None = None,
        replayed: Sequence[CommitReport] = (),
        *,
        max_bytes: int | None = None,
        max_disk_bytes: int | None = None,
    ) -> None:
        """
        Args:
            outbox: where reports are kept until taken; None: memory only.
            replayed: what `outbox.open()` returned, queued first; the outbox's `unread`
                reports follow them.
            max_bytes: what the reports held in memory may weigh (MAX_QUEUED_REPORT_BYTES).
            max_disk_bytes: what the outbox's segments may weigh on disk (MAX_OUTBOX_BYTES; at
                least two segments: a drop frees a whole one, never the one appends go to).
        """
        self.lock = threading.RLock()  # held by every public method
        self.outbox = outbox
        self.max_bytes = MAX_QUEUED_REPORT_BYTES if max_bytes is None else max_bytes
        disk = MAX_OUTBOX_BYTES if max_disk_bytes is None else max_disk_bytes
        self.max_disk_bytes = max(disk, 2 * outbox.segment_bytes) if outbox is not None else disk
        self.unsent: collections.deque[Queued] = collections.deque()
        # `acked` of this session's reports are taken or dropped, the first of `unacked` is next
        self.unacked: collections.deque[Queued] = collections.deque()
        # After those held, in order: a count of reports on disk only (the outbox's unread),
        # or one kept in memory only (its append failed) while some were on disk only.
        self.spilled: collections.deque[int | Queued] = collections.deque()
        self.spilled_count = 0
        self.held_bytes = 0  # of the reports in memory: unsent, unacked, spilled
        self.held_reports = 0  # reports the items of unsent and unacked stand for
        self.acked = 0
        self.dropped = 0  # past MAX_QUEUED_REPORTS, or past max_bytes in memory only (logged)
        self._append_failing = False
        self._read_failures = 0  # read backs failed in a row (warned of, rate-limited)
        self._read_warned_at = 0.0
        # while `_fit_disk` drops: the outbox frames of the drops, forgotten once their notes
        # are saved (once for a segment's worth of drops, not a sync each)
        self._deferred: int | None = None
        # dropped reports, told to the master as markers once it takes reports again
        self.lost = LostReports(outbox.directory / "lost" if outbox is not None else None)
        for report in replayed:
            self._push(Queued(report, 1, held_bytes(report, len(ENCODER.encode(report)))))
        if outbox is not None and outbox.unread:
            self._spill(outbox.unread)
        while self.pending > MAX_QUEUED_REPORTS:
            self._drop_oldest()
        self._fit_disk(0)  # the bound was lowered since
        self._refill()
        self.lost.save()

    @_locked
    def add(self, report: CommitReport) -> None:
        """Keep `report` on disk, then queue it (in memory too if it fits)."""
        payload = ENCODER.encode(report)
        if self.pending >= MAX_QUEUED_REPORTS:
            self._drop_oldest()
        self._fit_disk(FRAME_HEADER_BYTES + len(payload))
        self._queue(report, payload)
        self.lost.save()

    def _queue(self, report: CommitReport, payload: bytes) -> None:
        """Keep `report` (encoded: `payload`) on disk, then queue it, within the memory bound."""
        cost = held_bytes(report, len(payload))
        held = not self.spilled and (self._window == 0 or self.held_bytes + cost <= self.max_bytes)
        frames = self._persist(payload, held)
        if frames and not held:
            self._spill(1)
            if not self._window:  # a read back that failed: tried again (none held to send)
                self._refill()
            return
        if self.held_bytes + cost > self.max_bytes:
            self._make_room(cost)
        self.held_bytes += cost
        item = Queued(report, frames, cost)
        if self.spilled:
            self.spilled.append(item)
            self.spilled_count += 1
        else:
            self.unsent.append(item)
            self.held_reports += 1
        if self.spilled and not self._window:  # a read back that failed: tried again
            self._refill()

    @_locked
    def take_batch(self, limit: int) -> list[Queued]:
        """The next (at most `limit`) unsent reports, out of the queue: the caller puts them in
        `unacked` before it sends them, so that the oldest reports stay at the queue's head (a
        drop past the bound forgets the oldest on disk too), or back with `session_over`."""
        return [self.unsent.popleft() for _ in range(min(len(self.unsent), limit))]

    @_locked
    def hold_next(self, limit: int, merge: Callable[[list[Queued]], list[Queued]]) -> list[Queued]:
        """`take_batch`, `merge` (into fewer messages) and put in `unacked`, in one step: the
        link's, about to send them (an apply thread's report may drop the oldest meanwhile)."""
        merged = merge(self.take_batch(limit))
        self.unacked.extend(merged)
        return merged

    @_locked
    def sent_to_unacknowledging(self) -> None:
        """What was sent went to a master that does not acknowledge (an older release): it
        takes what it reads, so it is forgotten here and in the outbox."""
        self.taken(self.acked + len(self.unacked))

    @_locked
    def taken(self, upto: int) -> None:
        """The master took the first `upto` reports of this session: forget them, and read back
        those waiting on disk that now fit in memory."""
        if upto > self.acked + len(self.unacked):
            raise ProtocolError(f"reports_taken: {upto} reports, but fewer were sent")
        frames = 0
        while self.acked < upto:
            item = self.unacked.popleft()
            frames += item.frames
            self.held_bytes -= item.held_bytes
            self.held_reports -= item.reports
            self.acked += 1
        self.lost.withdraw(upto)
        self._consume(frames)
        self._refill()
        self._tell_lost()

    def _tell_lost(self) -> None:
        """The master takes reports: queue the markers of those dropped meanwhile, after the
        others (agent/_lost_reports.py), and forget their notes."""
        markers = self.lost.take()
        for report in markers:
            self._queue(report, ENCODER.encode(report))
        if markers:
            logger.error(
                "commit reports for the master were dropped past the queue's bounds (%s since "
                "this agent started, the notes of earlier drops kept across restarts); told it "
                "for %s mappings, whose sites it purges whole",
                self.dropped,
                len(markers),
            )
        self.lost.save()

    @_locked
    def session_over(self) -> None:
        """Not taken: sent again, first and in order, on the next session (numbered from 1)."""
        self.unsent.extendleft(reversed(self.unacked))
        self.unacked.clear()
        self.acked = 0
        self.lost.confirm()  # what was dropped after it was sent, not said taken, is lost
        self._refill()  # a read back that failed: tried again

    @_locked
    def read_back(self) -> bool:
        """Read back the next READ_BACK_STEP_BYTES of spilled reports that fit in memory (the
        link's writer, once it sent all unsent, or when `stalled`); True if any is unsent."""
        self._refill()
        return bool(self.unsent)

    @property
    def stalled(self) -> bool:
        """Reports are spilled and none is held: a read back failed, and no ack will come to
        try it again (the link retries it every READ_BACK_RETRY_S, `read_back`)."""
        return bool(self.spilled) and not self._window

    @property
    def pending(self) -> int:
        """Reports the master has not taken yet, sent or not, in memory or on disk only."""
        return self.held_reports + self.spilled_count

    @property
    def _window(self) -> int:
        return len(self.unsent) + len(self.unacked)

    def _push(self, item: Queued) -> None:
        if self.pending >= MAX_QUEUED_REPORTS:
            self._drop_oldest()
        self.unsent.append(item)
        self.held_bytes += item.held_bytes
        self.held_reports += item.reports

    def _spill(self, count: int) -> None:
        """`count` more reports on disk only, after all others."""
        if self.spilled and isinstance(self.spilled[-1], int):
            self.spilled[-1] += count
        else:
            self.spilled.append(count)
        self.spilled_count += count

    def _refill(self) -> None:
        """Move the spilled reports at the head into memory while they fit (one at least when
        none is held), reading back those on disk only: READ_BACK_STEP_BYTES of them (one at
        least), as this runs on the event loop; the link's writer reads the rest between sends
        (`read_back`)."""
        read = 0
        while self.spilled and read < READ_BACK_STEP_BYTES:
            head = self.spilled[0]
            if isinstance(head, Queued):  # in memory already
                self.spilled.popleft()
                self.spilled_count -= 1
                self.unsent.append(head)
                self.held_reports += head.reports
                continue
            try:
                peeked = self.outbox.peek_unread() if self.outbox is not None else None
            except OSError as exc:  # tried again at the next take, session, report or retry
                self._read_failed(exc)
                return
            if self._read_failures:
                logger.warning(
                    "report outbox: commit reports are read back again (after %s failures)",
                    self._read_failures,
                )
                self._read_failures = 0
            if peeked is None:  # the outbox lost them (not read back: see its warnings)
                self._unspill(head)
                continue
            report, encoded = peeked
            read += encoded
            cost = 0 if report is None else held_bytes(report, encoded)
            if self._window and self.held_bytes + cost > self.max_bytes:
                return
            assert self.outbox is not None
            self._unspill(self.outbox.advance())
            if report is not None:
                self.unsent.append(Queued(report, 1, cost))
                self.held_bytes += cost
                self.held_reports += 1

    def _read_failed(self, exc: OSError) -> None:
        """Warn of a failed read back: the first, then at most every READ_BACK_WARN_S."""
        now = time.monotonic()
        if not self._read_failures or now - self._read_warned_at >= READ_BACK_WARN_S:
            logger.warning(
                "report outbox %s: cannot read back commit reports waiting on disk (%s); "
                "tried again every %s s, they are sent once it works (failed %s times)",
                self.outbox.directory if self.outbox is not None else "-",
                exc,
                READ_BACK_RETRY_S,
                self._read_failures + 1,
            )
            self._read_warned_at = now
        self._read_failures += 1

    def _unspill(self, count: int) -> None:
        """`count` reports on disk only, at the head of `spilled`, are read back (or lost)."""
        while count > 0 and self.spilled and isinstance(self.spilled[0], int):
            n = min(count, self.spilled[0])
            count -= n
            self.spilled_count -= n
            if self.spilled[0] == n:
                self.spilled.popleft()
            else:
                self.spilled[0] -= n

    def _fit_disk(self, size: int) -> None:
        """Make room in the outbox for `size` more bytes within `max_disk_bytes`: the oldest
        reports go until their segment is deleted (a segment's worth of them, at most: there are
        two segments at least past the bound), then those on disk are read back."""
        outbox = self.outbox
        if outbox is None or outbox.size_bytes + size <= self.max_disk_bytes:
            return
        dropping = True
        while dropping and outbox.size_bytes + size > self.max_disk_bytes and self.pending:
            need = max(outbox.head_pending, 1)  # the reports whose drop deletes the first segment
            self._deferred = 0
            try:
                while self._deferred < need and dropping:
                    dropping = self._drop_oldest(refill=False)
            finally:
                frames, self._deferred = self._deferred, None
            self.lost.save()  # the notes first: a kill after the consume keeps them
            self._consume(frames)
        self._refill()

    def _make_room(self, cost: int) -> None:
        """A report kept in memory only does not fit: the oldest held go (never those spilled:
        they are newer)."""
        while self.held_bytes + cost > self.max_bytes and self._drop_oldest(refill=False):
            pass

    def _drop_oldest(self, *, refill: bool = True) -> bool:
        """Drop the oldest report (of a merged message: its first; the message dropped all it
        stood for, up to 64 reports for one over the bound); False if none could be
        (none held, none read back)."""
        if not self._window and self._drop_unread():
            return True
        if not self._window:
            self._refill()  # the oldest is spilled: read back first
        sent_in = 0  # the number of its message in the session, if sent
        if self.unacked:
            sent_in = self.acked + 1
            item, rest = _split_first(self.unacked.popleft())
            if rest is None:
                self.acked += 1  # the next one keeps its number in the session
            else:  # the message keeps its number: the others of it stay, and go again if need be
                self.unacked.appendleft(rest)
        elif self.unsent:
            item, rest = _split_first(self.unsent.popleft())
            if rest is not None:
                self.unsent.appendleft(rest)
        else:
            return False
        self.held_bytes -= item.held_bytes
        self.held_reports -= item.reports
        self._count_dropped(item.reports)
        # sent: the master may take it yet (`taken` withdraws the note), or not (`session_over`)
        self.lost.note(item.report, sent_in=sent_in)
        self._consume_dropped(item.frames)
        if refill:
            self._refill()
        return True

    def _drop_unread(self) -> bool:
        """Drop the oldest report if it is on disk only, unread (a drop past the disk bound
        passes a segment's worth: read back and decoded one by one, 8 MiB of small reports
        blocked the event loop ~160 ms); False if it is not, or its segment cannot be read."""
        if self.outbox is None or not self.spilled or not isinstance(self.spilled[0], int):
            return False
        try:
            frames, head = self.outbox.skip_unread()
        except OSError as exc:
            self._read_failed(exc)
            return False
        self._unspill(frames)
        if head is not None:
            self.lost.note(head)
        else:  # damaged on disk since written: not dropped by the bound, and of no known mapping
            logger.warning(
                "report outbox %s: %s commit reports passed unread by a drop are damaged on "
                "disk (the segment is kept as .bad); lost with no marker: their mappings are "
                "not known, purge their sites by hand if their caches may be stale",
                self.outbox.directory,
                frames,
            )
        if frames == 1:  # else lost: taken with the reports around them (Segment.take)
            self._count_dropped(1)
            self._consume_dropped(1)
        return True

    def _consume_dropped(self, frames: int) -> None:
        """Forget dropped reports in the outbox once their notes are saved (a kill in between
        would lose both); while `_fit_disk` drops, once it saved the notes of all."""
        if self._deferred is not None:
            self._deferred += frames
            return
        self.lost.save()
        self._consume(frames)

    def _count_dropped(self, reports: int) -> None:
        before, self.dropped = self.dropped, self.dropped + reports
        if not before or before // 10_000 != self.dropped // 10_000:
            logger.error(
                "commit reports for the master: over %s queued, %s MiB on disk (or %s MiB in "
                "memory, not on disk), dropped the oldest (%s so far; their records miss in the "
                "job log, and their mappings' sites are purged whole once the master takes "
                "reports again): bring the master back, or raise report_outbox_max_mb",
                MAX_QUEUED_REPORTS,
                self.max_disk_bytes >> 20,
                self.max_bytes >> 20,
                self.dropped,
            )

    def _persist(self, payload: bytes, held: bool) -> int:
        """Append a report to the outbox; the frames it takes there (0: memory only)."""
        if self.outbox is None:
            return 0
        try:
            self.outbox.append_encoded(payload, held=held)
        except OSError as exc:
            if not self._append_failing:
                logger.error(
                    "report outbox %s: cannot append (%s); commit reports are kept in memory "
                    "only until it works again (a kill of the agent would lose them)",
                    self.outbox.directory,
                    exc,
                )
            self._append_failing = True
            return 0
        if self._append_failing:
            logger.warning("report outbox %s: appends work again", self.outbox.directory)
            self._append_failing = False
        return 1

    def _consume(self, frames: int) -> None:
        if frames == 0 or self.outbox is None:
            return
        try:
            self.outbox.consume(frames)
        except OSError as exc:  # a restart would send them again: the master takes repeats
            logger.warning("report outbox %s: %s", self.outbox.directory, exc)


def _split_first(item: Queued) -> tuple[Queued, Queued | None]:
    """The oldest report of `item` and what is left of it (None: it was the only one): a
    message merged from several loses only its first to a drop (it lost all of them)."""
    if len(item.parts) < 2:
        return item, None
    first, rest = item.parts[0], item.parts[1:]
    if len(rest) == 1:
        return first, rest[0]
    report = msgspec.structs.replace(
        item.report,
        records=item.report.records[len(first.report.records) :],
        watermark=max(part.report.watermark for part in rest),
    )
    left = Queued(
        report,
        item.frames - first.frames,
        item.held_bytes - first.held_bytes,
        item.reports - first.reports,
        rest,
    )
    return first, left
