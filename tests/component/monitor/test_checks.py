"""The monitor's checks over a real store and real sockets: probes that hang, agents that stop
reporting, series that disappear."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import anyio
import pytest

from relaysync.master.store import Store
from relaysync.monitor.collectors import sample
from relaysync.monitor.engine import MonitorService
from relaysync.monitor.types import AlertInfo
from relaysync.protocol.messages import MetricsReport

INTERVAL_S = 0.1
WAIT_S = 20.0  # generous, yet well below the hanging probe's 60 s timeout
NODE = "d" * 64


@contextmanager
def blackhole() -> Iterator[int]:
    """A loopback port that never answers a connect: its accept queue is full, so the kernel
    drops every new SYN, like a firewall dropping packets to a server that is down."""
    with ExitStack() as stack:
        server = stack.enter_context(socket.socket())
        server.bind(("127.0.0.1", 0))
        server.listen(0)
        port = int(server.getsockname()[1])
        for _ in range(16):  # fill the queue until a connect hangs
            client = stack.enter_context(socket.socket())
            client.settimeout(0.5)
            try:
                client.connect(("127.0.0.1", port))
            except TimeoutError:
                break
        else:
            pytest.skip("this kernel accepts connects beyond a full listen backlog")
        yield port


def _monitor(store: Store, links_up: Callable[[], set[str]] = set) -> MonitorService:
    return MonitorService(
        store=store,
        publish=lambda kind, data: None,
        links_up=links_up,
        self_figures=list,
        interval_s=INTERVAL_S,
        heartbeat_grace_s=0.0,  # the server in these tests never links
    )


def _run_until(monitor: MonitorService, done: Callable[[], bool]) -> bool:
    """Run the monitor until `done()` holds or WAIT_S pass; returns whether it held."""

    async def main() -> bool:
        async with anyio.create_task_group() as tg:
            await tg.start(monitor.serve)
            with anyio.move_on_after(WAIT_S):
                while not done():
                    await anyio.sleep(0.02)
            tg.cancel_scope.cancel()
        return done()

    return anyio.run(main)


def test_a_hanging_probe_does_not_hold_up_the_other_checks(
    store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    """A TCP probe that waits its whole 60 s timeout: the heartbeat of a server whose link is
    down still fires within a few ticks, and the probe is not started again while it runs."""
    store.upsert_server(node_id=NODE, name="web1", region="r", group="g", address="127.0.0.1:1")
    caplog.set_level(logging.DEBUG, logger="relaysync.monitor.engine")
    with blackhole() as port:
        probe = store.monitoring.create_probe(
            name="slow", kind="tcp", host="127.0.0.1", port=port, timeout_s=60
        )
        monitor = _monitor(store)
        assert _run_until(
            monitor,
            lambda: "heartbeat:web1" in monitor.conditions.firing_keys() and monitor.ticks >= 20,
        ), f"after {monitor.ticks} ticks: {monitor.conditions.firing_keys()}"
    started = [r for r in caplog.records if r.getMessage() == f"probe {probe.name} started"]
    assert len(started) == 1, [r.getMessage() for r in caplog.records]


def test_a_restart_keeps_the_open_alert_of_a_probe_still_down(store: Store) -> None:
    """The master restarts while a probe's target is down: its open alert stays open. The old
    monitor had no result of the probe at its first tick (probes run in the background), took
    its key for one no longer checked, resolved the alert, then fired a new one (a second
    FIRING notice) once the result came."""
    with blackhole() as port:
        probe = store.monitoring.create_probe(
            name="dropped", kind="tcp", host="127.0.0.1", port=port, timeout_s=1.0
        )
        assert _run_until(_monitor(store), lambda: bool(store.monitoring.list_alerts()))
        events: list[str] = []
        restarted = MonitorService(  # the target still down
            store=store,
            publish=lambda kind, data: events.append(kind),
            links_up=set,
            self_figures=list,
            interval_s=INTERVAL_S,
        )
        judged_at: list[int] = []  # the tick at which the probe's first result was there

        def judged_twice() -> bool:
            if probe.id in restarted.probe_results and not judged_at:
                judged_at.append(restarted.ticks)
            return bool(judged_at) and restarted.ticks >= judged_at[0] + 2

        assert _run_until(restarted, judged_twice)
    alerts = store.monitoring.list_alerts()
    assert [(a.key, a.state) for a in alerts] == [(f"probe:{probe.id}", "firing")], alerts
    assert events == [], events


REPORT_S = 0.5  # the agents' report interval the master expects, for these tests


def _report(monitor: MonitorService, **figures: float) -> None:
    samples = tuple(sample(name, value) for name, value in figures.items())
    monitor.on_metrics(NODE, "web1", MetricsReport(at=time.time(), samples=samples))


def _alerts(store: Store, key: str) -> list[AlertInfo]:
    return [a for a in store.monitoring.list_alerts(server="web1") if a.key == key]


def _health(store: Store) -> str:
    return next(s.health for s in store.list_servers() if s.name == "web1")


def test_an_agent_whose_figures_stop_is_alerted_until_they_return(store: Store) -> None:
    """The control link stays up but the reports stop (the collector died): a "no data" alert
    fires after three report intervals, and resolves once figures come back."""
    store.upsert_server(node_id=NODE, name="web1", region="r", group="g", address="127.0.0.1:1")
    monitor = _monitor(store, links_up=lambda: {NODE})
    monitor.report_interval_s = REPORT_S
    key = "no_data:web1"

    async def feed_for(seconds: float) -> None:
        with anyio.move_on_after(seconds):
            while True:
                _report(monitor, cpu_percent=5)
                await anyio.sleep(REPORT_S / 5)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(monitor.serve)
            await feed_for(4 * REPORT_S * 3)  # reporting: no alert
            assert _alerts(store, key) == []
            with anyio.fail_after(WAIT_S):  # silent from here
                while [a.state for a in _alerts(store, key)] != ["firing"] or _health(
                    store
                ) == "ok":
                    await anyio.sleep(0.05)
            with anyio.fail_after(WAIT_S):  # reporting again
                while [a.state for a in _alerts(store, key)] != ["resolved"]:
                    _report(monitor, cpu_percent=5)
                    await anyio.sleep(REPORT_S / 5)
            tg.cancel_scope.cancel()

    anyio.run(main)


def test_a_threshold_whose_series_is_gone_resolves_saying_so(store: Store) -> None:
    """A disk-usage alert for a filesystem that is no longer reported (unmounted) while the
    agent goes on reporting its other figures resolves, with "series gone" in its message."""
    store.upsert_server(node_id=NODE, name="web1", region="r", group="g", address="127.0.0.1:1")
    rule = store.monitoring.create_threshold(
        scope="server", target="web1", metric="disk_used_percent", operator=">", value=90
    )
    monitor = _monitor(store, links_up=lambda: {NODE})
    monitor.report_interval_s = REPORT_S
    key = f"threshold:{rule.id}:web1"

    async def report_until(states: list[str], **figures: float) -> None:
        with anyio.fail_after(WAIT_S):
            while [a.state for a in _alerts(store, key)] != states:
                _report(monitor, **figures)
                await anyio.sleep(REPORT_S / 5)

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            await tg.start(monitor.serve)
            await report_until(["firing"], cpu_percent=5, disk_used_percent=95)
            await report_until(["resolved"], cpu_percent=5)  # the filesystem is unmounted
            tg.cancel_scope.cancel()

    anyio.run(main)
    (alert,) = _alerts(store, key)
    assert "series gone" in alert.message, alert.message
    assert [a.state for a in _alerts(store, "no_data:web1")] == []


def test_a_server_not_linked_yet_has_its_grace_and_one_that_was_linked_has_none(
    store: Store,
) -> None:
    """After a master restart the agents reconnect with backoff, and a new agent links after
    its join. Before the fix each was alerted "control link down" once one tick had passed
    (every restart notified every agent, and used up the key's pair of notices: an agent
    stopped minutes later went unnotified for the rest of the window; the CI of e2a0ef3).
    Now one not linked since the monitor started has HEARTBEAT_GRACE_S; one seen linked at a
    tick (web1), or registered since (web3: up and down again between two ticks), none."""
    nodes = {name: c * 64 for name, c in (("web1", "d"), ("web2", "e"), ("web3", "f"))}
    for name, node in nodes.items():
        store.upsert_server(node_id=node, name=name, region="r", group="g", address=f"{name}:1")
    links = {nodes["web1"]}
    started, grace_s = time.monotonic(), 4.0
    monitor = _monitor(store, links_up=lambda: set(links))
    monitor.heartbeat_grace_s = grace_s

    def firing() -> set[str]:
        return {key.split(":")[1] for key in monitor.conditions.firing_keys()}

    async def main() -> bool:
        """Whether the machine was fast enough to tell."""
        async with anyio.create_task_group() as tg:
            await tg.start(monitor.serve)
            with anyio.fail_after(WAIT_S):
                while monitor.ticks < 3:
                    await anyio.sleep(0.02)
            store.set_server_state(nodes["web3"], "up", time.time())  # registered, not linked
            links.clear()  # web1 was linked at a tick
            with anyio.fail_after(WAIT_S):
                while not {"web1", "web3"} <= firing():
                    await anyio.sleep(0.02)
            if time.monotonic() - started > grace_s - 1.0:
                tg.cancel_scope.cancel()
                return False
            assert "web2" not in firing()
            with anyio.fail_after(WAIT_S):  # web2 never linked: once its grace is over
                while "web2" not in firing():
                    await anyio.sleep(0.02)
            assert time.monotonic() - started >= grace_s
            tg.cancel_scope.cancel()
        return True

    if not anyio.run(main):
        pytest.skip("too slow a machine to tell a grace of 4 s from none")


def test_a_wall_clock_stepped_forward_does_not_end_the_heartbeat_grace(store: Store) -> None:
    """NTP steps the clock at boot, often just after the master started: the grace counted on
    the wall clock, so an agent not linked yet was alerted at once. (test_clock_steps.py runs
    the monitor through such steps.)"""
    store.upsert_server(node_id="d" * 64, name="web1", region="r", group="g", address="w:1")
    [server] = store.list_servers()
    wall, mono = time.time(), 100.0
    monitor = MonitorService(
        store=store,
        publish=lambda kind, data: None,
        links_up=set,
        self_figures=list,
        heartbeat_grace_s=30.0,
        clock=lambda: wall,
        monotonic=lambda: mono,
    )
    [seen] = monitor._heartbeats([server], set(), mono)  # first listed: its grace begins
    assert not seen.bad
    wall += 3600.0  # an hour ahead, a second after the start
    mono += 1.0
    [seen] = monitor._heartbeats([server], set(), mono)
    assert not seen.bad
    mono += 30.0
    [seen] = monitor._heartbeats([server], set(), mono)
    assert seen.bad  # its grace is over


def test_a_wall_clock_stepped_forward_makes_no_agent_look_silent(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """NTP steps the master's clock forward while every agent reports: report arrivals and the
    tick's `now` were wall times, so every server looked silent for the step at the next tick and
    "no data" fired for each, then resolved at its next report (two emails per server: 74 for
    40 servers). The same for a threshold's for_s, counted on the wall clock: it fired at once."""
    nodes = {"d" * 64: "web1", "e" * 64: "web2"}
    for node, name in nodes.items():
        store.upsert_server(node_id=node, name=name, region="r", group="g", address=f"{name}:1")
    store.monitoring.create_threshold(
        scope="all", metric="cpu_percent", operator=">", value=50, for_s=30
    )
    monitor = _monitor(store, links_up=lambda: set(nodes))
    monitor.report_interval_s = REPORT_S
    monitor.interval_s = 3600.0  # serve ticks once; the test ticks by itself after that
    real_time, step_s = time.time, 0.0
    monkeypatch.setattr(time, "time", lambda: real_time() + step_s)  # monotonic: untouched

    def report() -> None:
        for node, name in nodes.items():
            figures = (sample("cpu_percent", 90),)
            monitor.on_metrics(node, name, MetricsReport(at=time.time(), samples=figures))

    async def main() -> None:
        nonlocal step_s
        async with anyio.create_task_group() as tg:
            report()
            await tg.start(monitor.serve)
            with anyio.fail_after(WAIT_S):
                while monitor.ticks < 1:
                    await anyio.sleep(0.01)
            report()
            await monitor.tick()  # cpu_percent has been over 50 since the first tick: not 30 s
            step_s = 3600.0  # an hour ahead, between a report and the next tick
            await monitor.tick()
            report()
            await monitor.tick()
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert sorted(a.key for a in store.monitoring.list_alerts(limit=1000)) == []
    assert monitor.conditions.firing_keys() == set()
