"""The purger's loop lag: how much of a timeout's time the event loop itself was held up."""

from __future__ import annotations

import time

import anyio
import httpx
import pytest

from relaysync.purge.drivers._base import expired_timeout_s
from relaysync.purge.loop_lag import LoopLag

pytestmark = pytest.mark.anyio

HOLD_S = 0.4  # a hold-up of the loop, far over a tick
WAIT_S = 10.0  # bound on polls


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_hold_up_is_counted_before_and_after_the_ticker_sees_it() -> None:
    lag = LoopLag(tick_s=0.01)
    async with anyio.create_task_group() as tg:
        await tg.start(lag.serve)
        assert lag.held_up_s(2 * HOLD_S) == 0.0  # a quiet loop: a timeout is the peer's
        time.sleep(HOLD_S)  # noqa: ASYNC251 - the hold-up under test
        assert lag.lost_s(HOLD_S) >= 0.9 * HOLD_S  # not ticked yet: still counted
        assert lag.held_up_s(HOLD_S) >= 0.9 * HOLD_S
        deadline = time.monotonic() + WAIT_S
        while not lag._late or lag._late[-1][1] < 0.9 * HOLD_S:
            assert time.monotonic() < deadline, "the ticker never saw the hold-up"
            await anyio.sleep(0.01)
        assert lag.held_up_s(HOLD_S) >= 0.9 * HOLD_S  # ticked: counted from what it noted
        assert lag.held_up_s(10 * HOLD_S) == 0.0  # a tenth of a long timeout: the peer's
        assert lag.held_up_s(None) == 0.0  # not a timeout (refused, reset): never ours
        tg.cancel_scope.cancel()


def test_the_timeout_that_expired_is_read_from_the_request() -> None:
    timeout = httpx.Timeout(5.0, connect=2.0)
    request = httpx.Request("GET", "http://127.0.0.1:1/", extensions={"timeout": timeout.as_dict()})
    assert expired_timeout_s(httpx.ConnectTimeout("", request=request)) == 2.0
    assert expired_timeout_s(httpx.ReadTimeout("", request=request)) == 5.0
    assert expired_timeout_s(httpx.ConnectError("", request=request)) is None
    assert expired_timeout_s(httpx.ConnectTimeout("")) is None  # no request: unknown
