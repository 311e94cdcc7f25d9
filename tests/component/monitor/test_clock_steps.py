"""The monitor's schedules under a wall clock that steps (NTP, a VM resumed): downsample runs and
the heartbeat grace count on the monitor's monotonic clock, never on the wall clock, and only
on the clocks it was given (`MonitorService(clock=, monotonic=)`), so a test that moves them
sees what it set.

Both clocks stand until the test moves them; the monitor ticks every INTERVAL_S real seconds."""

from __future__ import annotations

import time

import anyio
import pytest

from relaysync.master.store import Store
from relaysync.monitor.engine import DOWNSAMPLE_EVERY_S, MonitorService

INTERVAL_S = 0.05
WAIT_S = 30.0
NODE = "f" * 64


class _Clock:
    """A clock the test sets (a whole second to begin with, so the sums below are exact)."""

    def __init__(self) -> None:
        self.start = self.now = float(int(time.time()))

    def __call__(self) -> float:
        return self.now


def _monitor(store: Store, wall: _Clock, mono: _Clock, **options: float) -> MonitorService:
    return MonitorService(
        store=store,
        publish=lambda kind, data: None,
        links_up=set,  # no agent linked
        self_figures=list,
        interval_s=INTERVAL_S,
        clock=wall,
        monotonic=mono,
        **options,
    )


async def _full_tick(monitor: MonitorService) -> None:
    """Wait until a whole tick has run since this call: it read the clocks as the test left them."""
    ticks = monitor.ticks
    with anyio.fail_after(WAIT_S):
        while monitor.ticks < ticks + 2:  # the one under way may have read them before
            await anyio.sleep(INTERVAL_S / 2)


def _counting_downsamples(store: Store, monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The `now` of each downsample run the monitor starts (each still runs, on the store)."""
    runs: list[float] = []
    downsample = store.monitoring.downsample

    def counting(*, now: float, **kwargs: object) -> tuple[int, int]:
        runs.append(now)
        return downsample(now=now, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(store.monitoring, "downsample", counting)
    return runs


async def _settled(monitor: MonitorService, runs: list[float], count: int) -> None:
    """Two whole ticks, and the downsample runs started by then finished."""
    await _full_tick(monitor)
    await _full_tick(monitor)
    with anyio.fail_after(WAIT_S):
        while monitor._downsampling:
            await anyio.sleep(INTERVAL_S / 2)
    assert len(runs) == count, runs


def test_downsampling_runs_on_the_monotonic_clock(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wall clock stepped back an hour does not stop downsampling for that hour, and one
    stepped forward a day does not start a run early: runs come every DOWNSAMPLE_EVERY_S of
    the monotonic clock. Each still folds the figures by the wall clock (the `now` it is given)."""
    wall, mono = _Clock(), _Clock()
    runs = _counting_downsamples(store, monkeypatch)
    monitor = _monitor(store, wall, mono)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(monitor.serve)
            await _settled(monitor, runs, 1)  # the first tick starts one
            wall.now, mono.now = wall.start - 3600.0, mono.start + DOWNSAMPLE_EVERY_S
            await _settled(monitor, runs, 2)  # on the wall clock: none for an hour
            wall.now = wall.start + 86_400.0
            await _settled(monitor, runs, 2)  # on the wall clock: one at once
            mono.now = mono.start + 2 * DOWNSAMPLE_EVERY_S - 1.0
            await _settled(monitor, runs, 2)
            mono.now = mono.start + 2 * DOWNSAMPLE_EVERY_S
            await _settled(monitor, runs, 3)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert runs == [wall.start, wall.start - 3600.0, wall.start + 86_400.0]


def _heartbeat_alerts(store: Store) -> list[str]:
    return [a.state for a in store.monitoring.list_alerts() if a.key == "heartbeat:web1"]


@pytest.mark.parametrize("step_s", [0.0, -3600.0])
def test_the_heartbeat_grace_counts_on_the_monitors_monotonic_clock(
    store: Store, step_s: float
) -> None:
    """An agent registered but never linked: its heartbeat alert fires once the grace has
    passed on the monotonic clock the monitor was given, whatever the wall clock did meanwhile.
    The monitor read time.monotonic() itself (on the clock the test moves, the grace never
    ended), and took the wall clock's time since the server was created (stepped back an hour,
    the grace lasted an hour)."""
    store.upsert_server(node_id=NODE, name="web1", region="r", group="g", address="127.0.0.1:1")
    wall, mono = _Clock(), _Clock()
    grace_s = 30.0
    monitor = _monitor(store, wall, mono, heartbeat_grace_s=grace_s)
    # registered a minute before the wall clock's new time, so only the monitor's start counts
    wall.now = time.time() + 60.0

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(monitor.serve)
            mono.now = mono.start + grace_s - 1.0
            await _full_tick(monitor)
            assert _heartbeat_alerts(store) == []  # within the grace
            wall.now += step_s
            mono.now = mono.start + grace_s
            await _full_tick(monitor)  # bad from now on...
            mono.now += 1.0
            await _full_tick(monitor)  # ... for more than a heartbeat's for_s (INTERVAL_S)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert _heartbeat_alerts(store) == ["firing"]
