"""A virtual clock for anyio code on asyncio: an event loop whose time moves only when the test
moves it, so a test of scheduling (gaps, deadlines) checks exact times that a busy host cannot
shift.

anyio on asyncio reads the time, and sets every sleep and deadline, through the loop
(`loop.time`, `loop.call_at`): code under test needs no clock parameter. Worker threads
(`anyio.to_thread`) run in real time while the virtual time stands still, so a collection takes
no virtual time unless the test moves the clock while it runs. Use it with the anyio pytest
plugin: `anyio_backend` returning `("asyncio", {"loop_factory": VirtualTimeLoop})`. Tests must
not wait with `anyio.sleep` or `fail_after` (virtual: they would never end); `until` polls under
a bound in real time.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextvars import Context
from typing import Any

WAIT_S = 30.0  # real seconds: generous for a condition a worker thread or two must meet


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An event loop whose `time` is set by `advance_to`, and which tells its next deadline."""

    def __init__(self) -> None:
        super().__init__()
        self._now = 0.0
        self._timers: list[asyncio.TimerHandle] = []

    def time(self) -> float:
        return self._now

    def call_at(
        self,
        when: float,
        callback: Callable[..., object],
        *args: Any,
        context: Context | None = None,
    ) -> asyncio.TimerHandle:
        handle = super().call_at(when, callback, *args, context=context)
        self._timers.append(handle)
        return handle

    def advance_to(self, now: float) -> None:
        """Move the time to `now`; the timers due by then run as soon as the loop goes round."""
        assert now >= self._now, (now, self._now)
        self._now = now

    def next_deadline(self) -> float | None:
        """The earliest time a timer is set for after now (a sleep's end, a scope's deadline)."""
        self._timers = [h for h in self._timers if not h.cancelled() and h.when() > self._now]
        return min((h.when() for h in self._timers), default=None)


def virtual_loop() -> VirtualTimeLoop:
    loop = asyncio.get_running_loop()
    assert isinstance(loop, VirtualTimeLoop), "anyio_backend must give a VirtualTimeLoop"
    return loop


async def until(condition: Callable[[], object], what: str) -> None:
    """Go round the loop until `condition` holds; fail after WAIT_S real seconds."""
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"no {what} within {WAIT_S} s"
        await asyncio.sleep(0)
