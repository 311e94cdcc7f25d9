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


def _held(lag: LoopLag, timeout_s: float | None, now: float | None = None) -> float:
    """How long the hold-up a timeout of `timeout_s` comes out of lasted (0.0: not ours)."""
    found = lag.hold_up(timeout_s, now)
    return found[1] if found is not None else 0.0


async def test_a_hold_up_is_counted_before_and_after_the_ticker_sees_it() -> None:
    lag = LoopLag(tick_s=0.01)
    async with anyio.create_task_group() as tg:
        await tg.start(lag.serve)
        assert _held(lag, 2 * HOLD_S) == 0.0  # a quiet loop: a timeout is the peer's
        time.sleep(HOLD_S)  # noqa: ASYNC251 - the hold-up under test
        assert lag.lost_s(HOLD_S) >= 0.9 * HOLD_S  # not ticked yet: still counted
        assert _held(lag, HOLD_S) >= 0.9 * HOLD_S
        deadline = time.monotonic() + WAIT_S
        while not lag._late or lag._late[-1][1] < 0.9 * HOLD_S:
            assert time.monotonic() < deadline, "the ticker never saw the hold-up"
            await anyio.sleep(0.01)
        ended = lag._late[-1][0]  # ticked: counted from what it noted, as it comes out of it
        assert _held(lag, HOLD_S, now=ended) >= 0.9 * HOLD_S
        assert _held(lag, 10 * HOLD_S, now=ended) == 0.0  # a tenth of a long one: the peer's
        assert _held(lag, None) == 0.0  # not a timeout (refused, reset): never ours
        tg.cancel_scope.cancel()


def test_the_timeout_that_expired_is_read_from_the_request() -> None:
    timeout = httpx.Timeout(5.0, connect=2.0)
    request = httpx.Request("GET", "http://127.0.0.1:1/", extensions={"timeout": timeout.as_dict()})
    assert expired_timeout_s(httpx.ConnectTimeout("", request=request)) == 2.0
    assert expired_timeout_s(httpx.ReadTimeout("", request=request)) == 5.0
    assert expired_timeout_s(httpx.ConnectError("", request=request)) is None
    assert expired_timeout_s(httpx.ConnectTimeout("")) is None  # no request: unknown


def test_only_the_hold_up_a_timeout_comes_out_of_is_ours() -> None:
    """A hold-up early in a timeout's window ended while it still ran: a cache that answered
    would have been heard after it, so the timeout is the cache's (from the review: a cache
    really down, with a 1.2 s stall early in each 2 s connect, was never counted against)."""
    lag = LoopLag(tick_s=0.05)
    lag._last = 100.0  # the ticker ran at 100.0, on time
    lag._late.append((99.3, 1.2))  # and came out of a 1.2 s hold-up at 99.3
    assert lag.lost_s(2.0, now=100.02) >= 1.0  # more than half of the window was lost...
    assert _held(lag, 2.0, now=100.02) == 0.0  # ...but 0.7 s before the timeout expired
    lag._late.append((100.0, 1.2))  # one it comes out of now
    assert _held(lag, 2.0, now=100.02) == pytest.approx(1.2)
    lag._last = 98.0  # a hold-up the ticker has not seen the end of yet
    lag._late.clear()
    assert _held(lag, 2.0, now=99.55) == pytest.approx(1.5)


async def test_a_timeout_without_a_message_is_named_by_its_kind() -> None:
    """httpx's timeouts often carry no text: the error said "got no answer: ConnectTimeout: ."."""
    from relaysync.errors import CacheUnreachable
    from relaysync.purge.drivers.nginx import Nginx
    from relaysync.purge.site import CacheSpec
    from relaysync.purge.urls import parse_url

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectTimeout("", request=request)

    cache = CacheSpec(name="nginx", driver="nginx", address="127.0.0.1:1")
    async with httpx.AsyncClient(transport=httpx.MockTransport(refuse)) as client:
        with pytest.raises(CacheUnreachable) as raised:
            await Nginx(cache, client).purge_variant(parse_url("http://h/a.html"), "gzip")
    assert str(raised.value).endswith("got no answer: ConnectTimeout.")
