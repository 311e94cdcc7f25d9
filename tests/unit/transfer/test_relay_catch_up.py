"""A relay's catch-up of a child (RelayLink._catch_up): the wait for our parent fails the hop only
after CATCH_UP_STALL_S without progress; the comparison is not under that bound. A fixed 600 s
for both failed the hop of a child whose catch-up waited for a parent's long comparison, or
made one of ten minutes, and the master re-planned around a working hop."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from relaysync.transfer import relay
from relaysync.transfer.relay import RelayLink

pytestmark = pytest.mark.anyio

STALL_S = 0.3


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _short_bound(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(relay, "CATCH_UP_STALL_S", STALL_S)
    monkeypatch.setattr(relay, "WAIT_RELAY_S", 0.01)


class _Spool:
    def __init__(self) -> None:
        self.base: int | None = 0
        self.end = 0

    def covers(self, _seq: int) -> bool:
        return False


class _Feed:
    def __init__(self) -> None:
        self.spool = _Spool()
        self.committed = 0

    async def wait_for_records(self, _after: int, timeout_s: float) -> None:
        await anyio.sleep(timeout_s)


def _link(feed: _Feed, compare_s: float) -> tuple[Any, list[str]]:
    done: list[str] = []

    async def compare(_session: object) -> None:
        await anyio.sleep(compare_s)
        done.append("compared")

    link = SimpleNamespace(source=feed, _catch_up_by_compare=compare)
    return link, done


def _session(sent_upto: int) -> Any:
    async def send(_message: object) -> None:
        pass

    return SimpleNamespace(sent_upto=sent_upto, framed=SimpleNamespace(send=send))


async def test_a_comparison_longer_than_the_bound_is_not_cut() -> None:
    feed = _Feed()
    link, done = _link(feed, compare_s=3 * STALL_S)
    await RelayLink._catch_up(link, _session(0), 0)
    assert done == ["compared"]


async def test_a_wait_for_a_parent_that_makes_progress_goes_on() -> None:
    """Our parent commits a little at a time for longer than the bound (its own comparison
    of a big tree): the child waits, then is compared."""
    feed = _Feed()
    link, done = _link(feed, compare_s=0.0)

    async def parent() -> None:
        for _ in range(10):  # 10 x STALL_S / 3: over three bounds in all
            await anyio.sleep(STALL_S / 3)
            feed.spool.end += 1
        feed.committed = 10

    async with anyio.create_task_group() as tg:
        tg.start_soon(parent)
        with anyio.fail_after(30.0):
            await RelayLink._catch_up(link, _session(10), 0)
    assert done == ["compared"]


async def test_a_wait_without_progress_fails_the_hop() -> None:
    feed = _Feed()
    link, done = _link(feed, compare_s=0.0)
    with anyio.fail_after(30.0), pytest.raises(TimeoutError, match="no progress"):
        await RelayLink._catch_up(link, _session(10), 0)
    assert done == []
