"""The event bus: increasing ids, a bounded ring, and long-poll waits woken from any thread."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from relaysync.master.events import EventBus, EventType


def test_ids_increase_and_since_reads_after() -> None:
    bus = EventBus()
    first = bus.publish(EventType.SERVER_UP, node_id="a")
    second = bus.publish(EventType.MAPPING_CHANGED, mapping_id=1)
    assert (first.id, second.id) == (1, 2)
    assert bus.since(0) == [first, second]
    assert bus.since(1) == [second]
    assert bus.since(2) == []
    assert bus.since(0, limit=1) == [first]
    assert second.to_dict() == {
        "id": 2,
        "type": "mapping_changed",
        "time": second.time,
        "data": {"mapping_id": 1},
    }


def test_ring_keeps_the_newest() -> None:
    bus = EventBus(capacity=3)
    for i in range(10):
        bus.publish(EventType.COMMIT_FAILED, i=i)
    assert [e.id for e in bus.since(0)] == [8, 9, 10]
    assert [e.id for e in bus.since(8)] == [9, 10]
    assert bus.last_id == 10
    with pytest.raises(ValueError):
        EventBus(capacity=0)


def test_wait_since_times_out_empty() -> None:
    bus = EventBus()
    started = time.monotonic()
    assert asyncio.run(bus.wait_since(0, 0.05)) == []
    assert time.monotonic() - started >= 0.04


def test_wait_since_is_woken_by_publish_in_the_loop() -> None:
    async def main() -> list[int]:
        bus = EventBus()
        asyncio.get_running_loop().call_later(0.02, lambda: bus.publish(EventType.SERVER_DOWN))
        return [e.id for e in await bus.wait_since(0, 60.0)]

    assert asyncio.run(main()) == [1]  # woken: a wait that times out returns []


def test_wait_since_is_woken_by_publish_in_another_thread() -> None:
    async def main() -> list[int]:
        bus = EventBus()
        bus.publish(EventType.SERVER_UP)
        timer = threading.Timer(0.02, lambda: bus.publish(EventType.SERVER_DOWN))
        timer.start()
        events = await bus.wait_since(1, 60.0)
        timer.join()
        return [e.id for e in events]

    assert asyncio.run(main()) == [2]  # woken: a wait that times out returns []


def test_reader_from_before_a_restart_gets_everything() -> None:
    bus = EventBus()
    bus.publish(EventType.SERVER_UP)
    assert [e.id for e in bus.since(57)] == [1]
