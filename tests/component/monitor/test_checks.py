"""The monitor's checks over a real store and real sockets: probes that hang, agents that stop
reporting, series that disappear."""

from __future__ import annotations

import logging
import socket
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import anyio
import pytest

from relaysync.master.store import Store
from relaysync.monitor.engine import MonitorService

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
