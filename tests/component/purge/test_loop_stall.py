"""A hold-up of the purger's own event loop (a blocking call on it, a process starved of CPU)
while its connects to a cache are out is not taken for the cache being down."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import anyio
import pytest
from tests.component.purge.conftest import Harness

from relaysync.purge.purger import CONNECT_TIMEOUT_S

pytestmark = pytest.mark.anyio

BOUND_S = 30.0  # an upper bound on eventual purges; quiet-host runs take about 3 s here
STALL_S = CONNECT_TIMEOUT_S + 0.5  # past every connect timeout that is out
HELD = 3  # connects held up at once: the gate's TRIP_AFTER
GATHER_S = 5.0  # bound on the wait for those connects to be out together


class _Stall:
    """Hold the event loop up once (time.sleep on it) while the first HELD connects to one
    port are all out: the cache accepts each at once, the loop hears it STALL_S later."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.waiting = 0
        self.gathered = anyio.Event()
        self.done = False
        self.real = anyio.connect_tcp

    async def connect_tcp(self, *args: Any, **kwargs: Any) -> Any:
        if kwargs.get("remote_port") == self.port and not self.gathered.is_set():
            self.waiting += 1
            if self.waiting < HELD:
                with anyio.move_on_after(GATHER_S):
                    await self.gathered.wait()
            else:
                self.gathered.set()
                asyncio.get_running_loop().call_soon(
                    time.sleep, STALL_S
                )  # the others connect first
                self.done = True
        return await self.real(*args, **kwargs)


async def test_a_hold_up_of_the_purgers_loop_does_not_open_a_caches_gate(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One 2.5 s hold-up of the loop with purges out timed out every connect on Varnish, nginx
    and Squid at once (asyncio runs the expired timer before the task whose connect the cache
    had accepted): their gates opened, `cache_unreachable` was told, and the purges waited for
    probes. A timeout our loop's hold-up spent is not counted against the cache now."""
    rels = ["a.html", "b.html"]  # 2 files x 2 host names: 4 tries out at once on each cache
    for rel in rels:
        harness.write(rel, b"old")
        await anyio.to_thread.run_sync(harness.warm, rel)
        harness.write(rel, b"new")
    notes: list[tuple[str, dict[str, object]]] = []
    harness.purger.notify = lambda kind, data: notes.append((kind, data))
    stall = _Stall(harness.farm.caches["varnish"].port)
    monkeypatch.setattr(anyio, "connect_tcp", stall.connect_tcp)
    harness.commit("write", "a.html")
    harness.commit("write", "b.html")
    for rel in rels:
        await harness.until_served(rel, (200, b"new"), timeout_s=BOUND_S)
    assert stall.done, "the connects to Varnish were never out together"
    assert [kind for kind, _ in notes] == [], notes
    assert not any(gate.failures for gate in harness.purger._gates.values())
