"""A flapping alert over a real store and a real webhook receiver: its notices are rate limited
per alert key, a change held back goes out once settled, and the flaps held back are summarised
in the next notice.

The monitor runs on a clock the test moves (`_Clock`): windows and settle times are checked in
the monitor's own time, which a busy host cannot shift (a fresh-clone CI run measured 0.72 s of
a 1 s settle time in wall-clock stamps taken around the monitor's work)."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest
from anyio.abc import TaskGroup
from tests._monitor_receivers import Recorded, http_receiver

from relaysync.master.store import Store
from relaysync.monitor.alerts import Notice
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


class _Clock:
    """The monitor's time, which moves only when the test sets `now` (a whole second to begin
    with, so the sums below are exact)."""

    def __init__(self) -> None:
        self.start = self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


def _setup(
    store: Store, url: str, clock: _Clock, monotonic: _Clock | None = None, **options: float
) -> tuple[MonitorService, str]:
    """A server reporting `load`, a threshold with for_s=0 and no hysteresis on it, a webhook;
    the monitor's wall and monotonic clocks are both `clock` unless `monotonic` is given."""
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
        clock=clock,
        monotonic=clock if monotonic is None else monotonic,
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


def _started(monitor: MonitorService, monkeypatch: pytest.MonkeyPatch) -> list[Notice]:
    """The notices the monitor hands its notifier, as it does (each is still delivered, in the
    background: what has arrived lags what the monitor sent)."""
    started: list[Notice] = []
    start = monitor.notifier.start

    def noting(tg: TaskGroup, notice: Notice) -> None:
        started.append(notice)
        start(tg, notice)

    monkeypatch.setattr(monitor.notifier, "start", noting)
    return started


async def _full_tick(monitor: MonitorService) -> None:
    """Wait until a whole tick has run since this call: it read the clock as the test left it."""
    ticks = monitor.ticks
    with anyio.fail_after(WAIT_S):
        while monitor.ticks < ticks + 2:  # the one under way may have read it before
            await anyio.sleep(INTERVAL_S / 2)


async def _until_notices(monitor: MonitorService, log: list[Recorded], count: int) -> None:
    """Wait for `count` notices to have arrived, the threshold still breached meanwhile."""
    with anyio.fail_after(WAIT_S):
        while len(_notices(log)) < count:
            monitor.on_metrics(
                NODE, "web1", MetricsReport(at=time.time(), samples=(sample("load", 100),))
            )
            await anyio.sleep(INTERVAL_S)


def test_a_flapping_threshold_sends_one_pair_of_notices(
    store: Store,
    receiver: tuple[list[Recorded], str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Four fire/resolve flaps within the window: the channel gets the first pair only; the
    other six changes are held back (logged), not sent."""
    log, url = receiver
    monitor, key = _setup(store, url, _Clock())  # the clock stands: nothing settles, no window ends
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
    store: Store, receiver: tuple[list[Recorded], str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fire, resolve, and fire again half a second later: the second fire is held back, then
    sent when the window ends (the alert is still firing), saying it is flapping; its settle
    time would end later, 5.4 s after the first fire."""
    log, url = receiver
    clock = _Clock()
    monitor, key = _setup(store, url, clock, notice_window_s=5.0, notice_settle_s=4.9)
    started = _started(monitor, monkeypatch)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(monitor.serve)
            await _flap(monitor, store, key, ["firing", "resolved"])  # the window begins
            clock.now = clock.start + 0.5
            await _flap(monitor, store, key, ["firing"])  # held back
            clock.now = clock.start + 4.75
            await _full_tick(monitor)
            assert len(started) == 2  # neither the window's end nor the settle time yet
            clock.now = clock.start + 5.0
            await _full_tick(monitor)
            assert len(started) == 3  # at the window's end
            await _until_notices(monitor, log, 3)
            tg.cancel_scope.cancel()

    anyio.run(main)
    notices = _notices(log)
    assert [n["state"] for n in notices] == ["firing", "resolved", "firing"]
    assert "flapping" not in notices[1]["message"]
    assert "flapping: 1 change not notified" in notices[2]["message"], notices[2]["message"]


def test_a_held_change_that_settles_is_sent_before_the_window_ends(
    store: Store,
    receiver: tuple[list[Recorded], str],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A blip (fire, resolve), then the threshold breached for good: the second fire is held
    back, then sent once it has stayed so for the settle time, long before the window ends."""
    log, url = receiver
    settle_s = 1.0
    clock = _Clock()
    monitor, key = _setup(store, url, clock, notice_window_s=600.0, notice_settle_s=settle_s)
    started = _started(monitor, monkeypatch)
    caplog.set_level(logging.INFO, logger="relaysync.monitor")

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(monitor.serve)
            await _flap(monitor, store, key, ["firing", "resolved", "firing"])  # at clock.start
            clock.now = clock.start + settle_s - 0.25
            await _full_tick(monitor)
            assert len(started) == 2  # not settled yet
            clock.now = clock.start + settle_s
            await _full_tick(monitor)
            assert len(started) == 3  # settled
            await _until_notices(monitor, log, 3)
            tg.cancel_scope.cancel()

    anyio.run(main)
    notices = _notices(log)
    assert [n["state"] for n in notices] == ["firing", "resolved", "firing"]
    held = [r for r in caplog.records if "held back" in r.getMessage()]
    assert len(held) == 1
    assert "flapping: 1 change not notified" in notices[2]["message"], notices[2]["message"]


def _report(monitor: MonitorService) -> None:
    """The threshold still breached, reported now (on the monitor's clocks as the test left
    them): a gap in the reports would fire a no-data alert, whose notice is not the test's."""
    monitor.on_metrics(NODE, "web1", MetricsReport(at=time.time(), samples=(sample("load", 100),)))


@pytest.mark.parametrize("step_s", [3600.0, -3600.0], ids=["forward", "back"])
def test_a_wall_clock_step_neither_releases_nor_holds_a_held_notice(
    store: Store,
    receiver: tuple[list[Recorded], str],
    monkeypatch: pytest.MonkeyPatch,
    step_s: float,
) -> None:
    """A change held back stays held when the wall clock steps an hour, and goes out once settled:
    the window and the settle time count on the monotonic clock, which stands. On the wall clock a
    step forward (NTP, a VM resumed) ended the window and sent the held change at once; a step back
    held it until the wall clock caught up (an hour of an outage nobody was told about)."""
    log, url = receiver
    wall, mono = _Clock(), _Clock()
    monitor, key = _setup(store, url, wall, mono, notice_window_s=600.0, notice_settle_s=120.0)
    started = _started(monitor, monkeypatch)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(monitor.serve)
            await _flap(monitor, store, key, ["firing", "resolved", "firing"])  # the last held
            wall.now = wall.start + step_s
            await _full_tick(monitor)
            await _full_tick(monitor)
            assert [n.state for n in started] == ["firing", "resolved"]  # still held
            wall.now, mono.now = wall.now + 120.0, mono.start + 120.0
            _report(monitor)
            await _full_tick(monitor)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert [(n.metric, n.state) for n in started] == [
        ("load", "firing"),
        ("load", "resolved"),
        ("load", "firing"),  # settled, on the monotonic clock
    ]
    assert started[2].at == wall.start  # when it fired, on the wall clock
