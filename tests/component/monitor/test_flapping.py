"""A flapping alert over a real store and a real webhook receiver: its notices are rate limited
per alert key, a change held back goes out once settled, and the flaps held back are summarised
in the next notice."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from tests._monitor_receivers import Recorded, http_receiver

from relaysync.master.store import Store
from relaysync.monitor.collectors import sample
from relaysync.monitor.engine import MonitorService
from relaysync.protocol.messages import MetricsReport

INTERVAL_S = 0.1
WAIT_S = 30.0  # generous: each flap takes a tick or two
NODE = "e" * 64


@pytest.fixture
def receiver() -> Iterator[tuple[list[Recorded], str]]:
    with http_receiver() as got:
        yield got


def _setup(store: Store, url: str, **options: float) -> tuple[MonitorService, str]:
    """A server reporting `load`, a threshold with for_s=0 and no hysteresis on it, a webhook."""
    store.upsert_server(node_id=NODE, name="web1", region="r", group="g", address="127.0.0.1:1")
    rule = store.monitoring.create_threshold(
        scope="server", target="web1", metric="load", operator=">", value=50
    )
    store.monitoring.create_channel(name="hook", kind="webhook", config={"url": url + "/hook"})
    monitor = MonitorService(
        store=store,
        publish=lambda kind, data: None,
        links_up=lambda: {NODE},
        self_figures=list,
        interval_s=INTERVAL_S,
        **options,
    )
    return monitor, f"threshold:{rule.id}:web1"


async def _flap(monitor: MonitorService, store: Store, key: str, states: list[str]) -> None:
    """Drive the alert through `states` ("firing"/"resolved"), one tick-confirmed change each."""
    for state in states:
        load = 100.0 if state == "firing" else 0.0
        with anyio.fail_after(WAIT_S):
            while True:
                monitor.on_metrics(
                    NODE, "web1", MetricsReport(at=time.time(), samples=(sample("load", load),))
                )
                alerts = [a for a in store.monitoring.list_alerts() if a.key == key]
                if alerts and alerts[0].state == state:
                    break
                await anyio.sleep(INTERVAL_S / 2)


def _notices(log: list[Recorded]) -> list[dict[str, Any]]:
    return [json.loads(r.body) for r in list(log) if r.path == "/hook"]


def test_a_flapping_threshold_sends_one_pair_of_notices(
    store: Store,
    receiver: tuple[list[Recorded], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Four fire/resolve flaps within the window: the channel gets the first pair only; the
    other six changes are held back (logged), not sent."""
    log, url = receiver
    monitor, key = _setup(store, url)
    caplog.set_level(logging.INFO, logger="relaysync.monitor")

    def held() -> int:
        return sum("held back" in r.getMessage() for r in caplog.records)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(monitor.serve)
            await _flap(monitor, store, key, ["firing", "resolved"] * 4)
            with anyio.fail_after(WAIT_S):  # every change is either delivered or held back
                while len(_notices(log)) + held() < 8:
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert [n["state"] for n in _notices(log)] == ["firing", "resolved"]
    assert held() == 6


def test_the_flaps_held_back_are_summarised_once_the_window_ends(
    store: Store, receiver: tuple[list[Recorded], str]
) -> None:
    """Fire, resolve, fire again within the window: the second fire is held back, then sent
    when the window ends (the alert is still firing), saying it is flapping. The settle time
    is longer than what is left of the window once the fire is held (it is held two ticks at
    least after the window began)."""
    log, url = receiver
    monitor, key = _setup(store, url, notice_window_s=5.0, notice_settle_s=5.0 - INTERVAL_S)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(monitor.serve)
            await _flap(monitor, store, key, ["firing", "resolved", "firing"])
            with anyio.fail_after(WAIT_S):
                while len(_notices(log)) < 3:
                    monitor.on_metrics(  # still firing
                        NODE, "web1", MetricsReport(at=time.time(), samples=(sample("load", 100),))
                    )
                    await anyio.sleep(INTERVAL_S)
            tg.cancel_scope.cancel()

    anyio.run(main)
    notices = _notices(log)
    assert [n["state"] for n in notices] == ["firing", "resolved", "firing"]
    assert "flapping" not in notices[1]["message"]
    assert "flapping: 1 change not notified" in notices[2]["message"], notices[2]["message"]


def test_a_held_change_that_settles_is_sent_before_the_window_ends(
    store: Store, receiver: tuple[list[Recorded], str], caplog: pytest.LogCaptureFixture
) -> None:
    """A blip (fire, resolve), then the threshold breached for good: the second fire is held
    back, then sent once it has stayed so for the settle time, long before the window ends."""
    log, url = receiver
    settle_s = 1.0
    monitor, key = _setup(store, url, notice_window_s=600.0, notice_settle_s=settle_s)
    caplog.set_level(logging.INFO, logger="relaysync.monitor")

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(monitor.serve)
            await _flap(monitor, store, key, ["firing", "resolved", "firing"])
            with anyio.fail_after(WAIT_S):
                while len(_notices(log)) < 3:
                    monitor.on_metrics(  # still firing
                        NODE, "web1", MetricsReport(at=time.time(), samples=(sample("load", 100),))
                    )
                    await anyio.sleep(INTERVAL_S)
            tg.cancel_scope.cancel()

    anyio.run(main)
    notices = _notices(log)
    assert [n["state"] for n in notices] == ["firing", "resolved", "firing"]
    held = [r for r in caplog.records if "held back" in r.getMessage()]
    assert len(held) == 1
    assert "flapping: 1 change not notified" in notices[2]["message"], notices[2]["message"]
    # from the tick that held it to the third notice's arrival (not to when this test's loop,
    # slowed by a busy host, saw the alert's state in the store)
    arrived = [r.at for r in log if r.path == "/hook"][2]
    assert arrived - held[0].created >= settle_s - 0.05, (arrived, held[0].created)
