"""PeerServer: one session per mapping, the newest winning, even when the session before does
not let go in time (its worker thread busy past RECEIVE_TIMEOUT_S): two successors that both
waited for it go ahead one after the other, and the later ends the earlier (found in review:
both went ahead and the later replaced the earlier without ending it, two writers again)."""

from __future__ import annotations

import ssl

import anyio
import pytest

from relaysync.agent import peer_server as peer_server_module
from relaysync.agent.peer_server import PeerServer

WAIT_S = 20.0


def test_successors_of_a_stuck_session_end_each_other_but_the_last(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(peer_server_module, "RECEIVE_TIMEOUT_S", 0.2)
    server = PeerServer(
        host="127.0.0.1",
        port=0,
        ctx=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER),
        node_id="t" * 64,
        name="t",
        folders=lambda m: None,
        reporter=lambda f, j: lambda w, recs: None,
    )
    registered: list[str] = []
    ended: list[str] = []

    async def successor(name: str) -> None:
        """What `_session` does around `_receive`: take over, register, serve until ended."""
        await server._take_over(1)
        done = anyio.Event()
        with anyio.CancelScope() as scope:
            server._active[1], server._ended[1] = scope, done
            registered.append(name)
            try:
                await anyio.sleep_forever()
            finally:
                if server._active.get(1) is scope:
                    del server._active[1], server._ended[1]
                ended.append(name)
                done.set()

    async def main() -> None:
        server._active[1], server._ended[1] = anyio.CancelScope(), anyio.Event()  # never lets go
        async with anyio.create_task_group() as tg:
            tg.start_soon(successor, "B")
            tg.start_soon(successor, "C")
            with anyio.fail_after(WAIT_S):
                while len(registered) < 2:
                    await anyio.sleep(0.01)
            assert registered == ["B", "C"] and ended == ["B"]  # C ended B before it went on
            tg.cancel_scope.cancel()

    anyio.run(main)
