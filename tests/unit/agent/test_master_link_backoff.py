"""The control link backs off between attempts: a master down or restarting must not see every
agent of the fleet reconnect in a tight loop (found in review: an ordinary failure returned
False as the wait, and `anyio.sleep(False)` waited 0 s: 16,240 attempts in 2 s)."""

from __future__ import annotations

import socket
import ssl
import time

import anyio
import pytest

from relaysync.agent import master_link
from relaysync.agent.master_link import MasterLink
from relaysync.constants import RECONNECT_MIN_S
from relaysync.protocol.messages import Register

ATTEMPTS = 4


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_attempts_to_a_master_that_is_down_are_spaced_by_a_growing_backoff(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    attempts: list[float] = []
    connect = master_link.tls.connect

    async def counting(*args: object, **kwargs: object) -> object:
        attempts.append(time.monotonic())
        return await connect(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(master_link.tls, "connect", counting)

    async def on_assignment(_: object) -> None:
        pass

    link = MasterLink(
        control_address=f"127.0.0.1:{_closed_port()}",
        ctx=ssl.create_default_context(),
        master_node_id="m" * 64,
        node_id="n" * 64,
        name="a",
        register=Register(name="a", region="", group="", peer_address="127.0.0.1:1"),
        on_assignment=on_assignment,
    )

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(link.serve)
            with anyio.fail_after(30):
                while len(attempts) < ATTEMPTS:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    anyio.run(main)
    gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)][: ATTEMPTS - 1]
    # lower bounds only: a sleep is never shorter than asked (less a clock tick)
    expected = [RECONNECT_MIN_S * 2**i for i in range(ATTEMPTS - 1)]
    assert all(gap >= 0.95 * want for gap, want in zip(gaps, expected, strict=True)), gaps
