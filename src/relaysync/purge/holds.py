"""Acknowledgement holds: a commit report is acknowledged to its agent only once the purges it
released are in the store's purge queue.

A report written to the store is in the job log for good, but the purge it releases lives in
the purger's memory until its intake queues it (purge/purger.py), and the commit tracker may
hold it longer, waiting for the site's other origins (purge/ordering.py). Acknowledged at the
write, a kill of the master in between lost the purge: the agent had forgotten the report, and
no later report named the change again, so the cache kept serving the old bytes. Held until the
purges are queued, the report is sent again to the next run, whose purger releases it afresh.

`PurgeHold` is one report's side: how many of the changes it released (or waits on) are not
queued yet, and what to call once none is. `Waiters` is one change's side: the holds of the
reports that wait for it to be queued, shared between the tracker's memory of the change and
its `Released`, so that a report of a change released but not yet queued (a report sent again
after a dropped link) waits for it too.

Callbacks run on the event loop's thread (the purger's intake, the job log's writer); one that
raises is logged and does not keep the others from running.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

logger = logging.getLogger(__name__)

_NONE: tuple[()] = ()  # the holds of a queued change


class PurgeHold:
    """One commit report's released changes not yet queued; `then` callbacks run once none is
    left and the report was wholly observed (`seal`)."""

    __slots__ = ("_left", "_sealed", "_then")

    def __init__(self) -> None:
        self._left = 0
        self._sealed = False
        self._then: list[Callable[[], None]] = []

    @property
    def done(self) -> bool:
        return self._sealed and self._left == 0

    def wait_one(self) -> None:
        self._left += 1

    def one_queued(self) -> None:
        self._left -= 1
        self._run_if_done()

    def seal(self) -> None:
        """Every change of the report was observed: no more `wait_one`."""
        self._sealed = True
        self._run_if_done()

    def then(self, callback: Callable[[], None]) -> None:
        """Call `callback` once done (at once if done already)."""
        self._then.append(callback)
        self._run_if_done()

    def _run_if_done(self) -> None:
        if not self.done:
            return
        callbacks, self._then = self._then, []
        for callback in callbacks:
            try:
                callback()
            except Exception:  # an acknowledgement's bug must not stop the purger's intake
                logger.exception("commit report acknowledgement failed")


class Waiters:
    """The holds waiting for one released change to be queued."""

    __slots__ = ("_holds", "queued")

    def __init__(self) -> None:
        self._holds: list[PurgeHold] | tuple[()] = []
        self.queued = False

    def add(self, hold: PurgeHold | None) -> None:
        """`hold` waits for this change too, unless it is queued already."""
        if hold is None or self.queued:
            return
        hold.wait_one()
        assert isinstance(self._holds, list)
        self._holds.append(hold)

    def mark_queued(self) -> None:
        """The change is in the purge queue, or needs no purge (its site is gone)."""
        self.queued = True
        holds, self._holds = self._holds, _NONE  # the tracker remembers 100,000 of these
        for hold in holds:
            hold.one_queued()


def when_queued(holds: Sequence[PurgeHold], callback: Callable[[], None]) -> None:
    """Call `callback` once every one of `holds` is done (at once if none waits)."""
    waiting = [h for h in holds if not h.done]
    if not waiting:
        callback()
        return
    left = [len(waiting)]

    def one_done() -> None:
        left[0] -= 1
        if left[0] == 0:
            callback()

    for hold in waiting:
        hold.then(one_done)
