"""Loop lag: how long the purger's own event loop was held up, so that a timeout that expired
while the loop was not running is not counted against the cache it was waiting on.

A request's timeout is a timer on the event loop. When the loop is held up (a blocking call on
it, a process starved of CPU or of the GIL), a cache that answered at once is not heard until
the loop runs again, and asyncio then runs the expired timer before the task that would have
taken the answer: a connect to a cache that accepted within a millisecond ends in
ConnectTimeout. Reproduced: the loop blocked 2.5 s while the first purges of a change were out
timed out every one of them on Varnish, nginx and Squid at once, which opened their gates.

A timer that should fire every TICK_S notes how late it woke; a timeout that expires as the loop
comes out of a hold-up of at least HELD_SHARE of its length measured us, not the cache. A hold-up
earlier in the timeout's window does not count (the cache would have been heard after it), and
a gate counts the timeout anyway after `trip_after` excused in a row (purge/worker.py): a cache
really down while the loop keeps stalling still opens its gate.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import NoReturn

import anyio
from anyio.abc import TaskStatus

logger = logging.getLogger("relaysync.purge.purger")  # one logger name for the purger's story

TICK_S = 0.05  # the loop is looked at this often
LATE_MIN_S = 0.01  # a tick later than this is a hold-up, kept...
KEEP_S = 120.0  # ...this long: longer than any request timeout
HELD_SHARE = 0.5  # a timeout whose time the loop lost this share of is ours
WARN_S = 1.0  # a hold-up this long is logged (something blocks the loop or starves the process)
RECENT_TICKS = 2  # a hold-up that ended this many ticks ago is the one a timeout comes out of


class LoopLag:
    """The hold-ups of the event loop that runs serve(), for the last KEEP_S.

    Resource handling:
        one task (serve), a bounded deque of the late ticks.
    """

    def __init__(self, tick_s: float = TICK_S) -> None:
        self.tick_s = tick_s
        self._late: deque[tuple[float, float]] = deque()  # (monotonic end, seconds held up)
        self._last = 0.0  # monotonic time of the last tick (0.0: not serving)

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> NoReturn:
        """Tick until cancelled, noting each tick's lateness."""
        self._last = time.monotonic()
        task_status.started()
        try:
            while True:
                await anyio.sleep(self.tick_s)
                self._tick(time.monotonic())
        finally:
            self._last = 0.0

    def _tick(self, now: float) -> None:
        late = now - self._last - self.tick_s
        self._last = now
        if late > LATE_MIN_S:
            self._late.append((now, late))
            if late >= WARN_S:
                logger.warning(
                    "purger event loop held up %.2f s (a blocking call on it, or the process "
                    "starved of CPU): a cache timeout that expired in it is not counted against "
                    "the cache",
                    late,
                )
        while self._late and self._late[0][0] < now - KEEP_S:
            self._late.popleft()

    def lost_s(self, window_s: float, now: float | None = None) -> float:
        """Seconds of the last `window_s` during which the loop was held up, counting a hold-up
        that is not over for the ticker yet (it has not run since)."""
        now = time.monotonic() if now is None else now
        start = now - window_s
        lost = 0.0
        for end, late in reversed(self._late):
            if end <= start:
                break
            lost += min(late, end - start)
        if self._last:
            lost += max(0.0, now - self._last - self.tick_s)
        return min(lost, window_s)

    def hold_up(
        self, timeout_s: float | None, now: float | None = None
    ) -> tuple[float, float] | None:
        """The hold-up a timeout of `timeout_s` that has just expired comes out of, as (when it
        began, to the ms: the same for every timeout it spent; how long it lasted), if it lasted
        HELD_SHARE of the timeout or more; else None. Only the hold-up the loop is coming out of
        counts: one earlier in the timeout's window ended while the timeout still ran, and a
        cache that answered would have been heard once it was over. A timeout of None (refused,
        reset) is never ours."""
        if not timeout_s or timeout_s <= 0:
            return None
        now = time.monotonic() if now is None else now
        unticked = max(0.0, now - self._last - self.tick_s) if self._last else 0.0
        held, began = unticked, self._last + self.tick_s
        if self._late and self._late[-1][0] >= now - RECENT_TICKS * self.tick_s:
            end, late = self._late[-1]  # ended just now (its tick ran before this timeout's task)
            held, began = held + late, end - late
        if min(held, timeout_s) < HELD_SHARE * timeout_s:
            return None
        return round(began, 3), min(held, timeout_s)
