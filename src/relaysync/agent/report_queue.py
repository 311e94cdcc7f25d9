"""The report queue: an agent's commit reports for the master, in order, bounded, and on disk.

Each report is appended to the outbox (agent/outbox.py) before it is queued, so before the
source hears of the commit (the receiver's Ack waits on it), and forgotten there once the
master has taken it (`taken`), the link sent it to a master that does not acknowledge
(`forget`), or the bound dropped it. A restarted agent queues what the outbox still holds
first. Without an outbox (or while appends fail: a full disk, logged) reports are kept in
memory only, as before.

Past MAX_QUEUED_REPORTS the oldest report is dropped, sent or not, with a warning; the session's
count goes on, so the master's `ReportsTaken(upto)` still names the same reports.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Sequence
from typing import NamedTuple

from relaysync.errors import ProtocolError
from relaysync.protocol.messages import CommitReport

from .outbox import ReportOutbox

logger = logging.getLogger(__name__)

# Reports kept, sent or not, until the master took them; the oldest are dropped past this
# (watermarks come again with the next report, but the dropped records miss in the job log).
MAX_QUEUED_REPORTS = 100_000


class Queued(NamedTuple):
    """A report in the queue, and how many outbox frames it stands for (merged: several;
    kept in memory only: none)."""

    report: CommitReport
    frames: int


class ReportQueue:
    """Reports not sent yet (`unsent`), then sent on this session and not taken (`unacked`)."""

    def __init__(
        self, outbox: ReportOutbox | None = None, replayed: Sequence[CommitReport] = ()
    ) -> None:
        """
        Args:
            outbox: where reports are kept until taken; None: memory only.
            replayed: what `outbox.open()` returned, queued first.
        """
        self.outbox = outbox
        self.unsent: collections.deque[Queued] = collections.deque()
        # `acked` of this session's reports are taken or dropped, the first of `unacked` is next
        self.unacked: collections.deque[Queued] = collections.deque()
        self.acked = 0
        self.dropped = 0  # past MAX_QUEUED_REPORTS (logged)
        self._append_failing = False
        for report in replayed:
            self._push(Queued(report, 1))

    def add(self, report: CommitReport) -> None:
        """Keep `report` on disk, then queue it."""
        self._push(Queued(report, self._persist(report)))

    def take_batch(self, limit: int) -> list[Queued]:
        """The next (at most `limit`) unsent reports, out of the queue: the caller puts them in
        `unacked` before it sends them, so that the oldest reports stay at the queue's head (a
        drop past the bound forgets the oldest on disk too), or back with `session_over`."""
        return [self.unsent.popleft() for _ in range(min(len(self.unsent), limit))]

    def sent_to_unacknowledging(self) -> None:
        """What was sent went to a master that does not acknowledge (an older release): it
        takes what it reads, so it is forgotten here and in the outbox."""
        self.taken(self.acked + len(self.unacked))

    def taken(self, upto: int) -> None:
        """The master took the first `upto` reports of this session: forget them."""
        if upto > self.acked + len(self.unacked):
            raise ProtocolError(f"reports_taken: {upto} reports, but fewer were sent")
        frames = 0
        while self.acked < upto:
            frames += self.unacked.popleft().frames
            self.acked += 1
        self._consume(frames)

    def session_over(self) -> None:
        """Not taken: sent again, first and in order, on the next session (numbered from 1)."""
        self.unsent.extendleft(reversed(self.unacked))
        self.unacked.clear()
        self.acked = 0

    @property
    def pending(self) -> int:
        """Reports the master has not taken yet, sent or not."""
        return len(self.unsent) + len(self.unacked)

    def _push(self, item: Queued) -> None:
        if self.pending >= MAX_QUEUED_REPORTS:
            self._drop_oldest()
        self.unsent.append(item)

    def _drop_oldest(self) -> None:
        if self.unacked:
            item = self.unacked.popleft()
            self.acked += 1  # the next one keeps its number in the session
        else:
            item = self.unsent.popleft()
        self._consume(item.frames)
        self.dropped += 1
        if self.dropped == 1 or self.dropped % 10_000 == 0:
            logger.warning(
                "commit reports for the master: over %s queued, dropped the oldest "
                "(%s so far; their records miss in the job log)",
                MAX_QUEUED_REPORTS,
                self.dropped,
            )

    def _persist(self, report: CommitReport) -> int:
        """Append `report` to the outbox; the frames it takes there (0: memory only)."""
        if self.outbox is None:
            return 0
        try:
            self.outbox.append(report)
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
