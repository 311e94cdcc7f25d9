"""The control link backs off between attempts: a master down or restarting must not see every
agent of the fleet reconnect in a tight loop (found in review: an ordinary failure returned
False as the wait, and `anyio.sleep(False)` waited 0 s: 16,240 attempts in 2 s)."""

from __future__ import annotations

import time

import anyio
import pytest

from relaysync.agent import master_link
from relaysync.constants import RECONNECT_MIN_S
from tests.unit.agent._offline_link import offline_link

ATTEMPTS = 4


def test_attempts_to_a_master_that_is_down_are_spaced_by_a_growing_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts: list[float] = []
    connect = master_link.tls.connect

    async def counting(*args: object, **kwargs: object) -> object:
        attempts.append(time.monotonic())
        return await connect(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(master_link.tls, "connect", counting)

    link = offline_link()

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(link.serve)
            with anyio.fail_after(30):
                while len(attempts) < ATTEMPTS:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    anyio.run(main)
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)][: ATTEMPTS - 1]
    # lower bounds only: a sleep is never shorter than asked (less a clock tick)
    expected = [RECONNECT_MIN_S * 2**i for i in range(ATTEMPTS - 1)]
    assert all(gap >= 0.95 * want for gap, want in zip(gaps, expected, strict=True)), gaps
