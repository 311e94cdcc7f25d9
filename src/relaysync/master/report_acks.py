"""Acknowledgement of commit reports: which of an agent's reports the job log has taken durably.

A report is taken once the job-log writer (master/joblog.py) has appended it to its spool
(master/joblog_spool.py: the appends are fdatasynced, so they survive a kill of the master and a
power loss; a run tells its purger of a previous run's spool again), or has written it to the
store and the purger has queued the purges it released (purge/holds.py: the store keeps the
report, not the purge the purger held in memory). An agent that announced CAP_REPORT_ACK keeps every report it
sent until the master says so (`ReportsTaken(upto=n)`: the first n reports of this control
session), and sends the others again on its next session, so that a kill of the master loses none
of them.

`Receipts` is the writer's side: a callback per report, called once it is taken. `ReportAcks`
is a control session's side: it numbers the session's reports as they arrive (from 1, as the
agent does), keeps how far they are taken without a gap, and sends that to the agent.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Sequence
from functools import partial
from typing import NoReturn

import anyio

from relaysync.protocol.framing import FramedStream
from relaysync.protocol.messages import CommitReport, ReportsTaken
from relaysync.purge.holds import PurgeHold, when_queued

logger = logging.getLogger(__name__)


class Receipts:
    """The callbacks of the reports the job log holds and has not taken yet.

    Keyed by the report object (its id, the object held so that the id stays its own), since
    the writer moves the objects themselves between its queue, its tail and the spool.
    """

    def __init__(self) -> None:
        self._held: dict[int, tuple[CommitReport, Callable[[], None], Sequence[PurgeHold]]] = {}

    def __len__(self) -> int:
        return len(self._held)

    def hold(
        self, report: CommitReport, taken: Callable[[], None], purges: Sequence[PurgeHold] = ()
    ) -> None:
        """Call `taken` once `report` is taken; `purges`: the holds of what it released."""
        self._held[id(report)] = (report, taken, purges)

    def move(self, report: CommitReport, to: CommitReport) -> None:
        """`report` was split: it is taken once `to`, its last piece, is."""
        entry = self._held.pop(id(report), None)
        if entry is not None:
            self._held[id(to)] = (to, *entry[1:])

    def taken(self, reports: Iterable[CommitReport], *, spooled: bool = False) -> None:
        """`reports` are in the spool, or in the store (`spooled` False): call their callbacks
        (in their order), those written to the store once their purges are queued."""
        if not self._held:
            return
        for report in reports:
            entry = self._held.pop(id(report), None)
            if entry is None:
                continue
            _report, callback, purges = entry
            try:
                when_queued(() if spooled else purges, callback)
            except Exception:  # an acknowledgement's bug must not stop the job log
                logger.exception("commit report acknowledgement failed")


class ReportAcks:
    """One control session's commit reports: how many came, and how far they are taken."""

    def __init__(self) -> None:
        self.received = 0
        self.upto = 0  # every report numbered <= upto is taken
        self._early: set[int] = set()  # taken before an older one (spooled ahead of the queue)
        self._sent = 0
        self._changed = anyio.Event()
        self._told = anyio.Event()  # set after each ReportsTaken sent

    def receive(self) -> Callable[[], None]:
        """Number the next report of the session; returns what to call once it is taken."""
        self.received += 1
        return partial(self.taken, self.received)

    def taken(self, number: int) -> None:
        if number != self.upto + 1:
            self._early.add(number)
            return
        self.upto = number
        while self.upto + 1 in self._early:
            self._early.remove(self.upto + 1)
            self.upto += 1
        self._changed.set()

    async def serve(self, framed: FramedStream, lock: anyio.Lock) -> NoReturn:
        """Tell the agent how far its reports are taken, once per change (a flush takes many),
        sending under `lock` (the link's: assignments go out on it too)."""
        while True:
            await self._changed.wait()
            self._changed = anyio.Event()
            upto = self.upto
            if upto > self._sent:
                async with lock:
                    await framed.send(ReportsTaken(upto=upto))
                self._sent = upto
                self._told.set()

    async def told(self) -> None:
        """Wait until the agent was told of every report taken so far (by `serve`)."""
        while self._sent < self.upto:
            self._told = anyio.Event()
            await self._told.wait()
