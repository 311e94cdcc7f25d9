"""A peer server takes only the optional message kinds it announced: a SmallFile sent to one that
did not (a sender ignoring its Hello) ends the session with a clear error, over a real socket."""

from __future__ import annotations

import socket
from typing import Any

import anyio
import xxhash

from relaysync.agent.peer_server import PeerServer
from relaysync.constants import CAPABILITIES
from relaysync.errors import ProtocolError
from relaysync.protocol.connection import open_framed, serve_framed, wrap_accepted
from relaysync.protocol.messages import Checkpoint, SmallFile

SMALL = SmallFile(
    seq=1,
    path="f",
    size=4,
    mode=0o644,
    mtime_ns=1,
    data=b"data",
    hash=xxhash.xxh3_128_digest(b"data"),
)


def _read_one_batch(capabilities: tuple[str, ...]) -> Any:
    """What the peer server's batch reader makes of [SmallFile, Checkpoint]: the batch or the error."""
    server: Any = PeerServer(
        host="127.0.0.1",
        port=0,
        ctx=None,
        node_id="b" * 64,
        name="t1",  # type: ignore[arg-type]
        folders=lambda _m: None,
        reporter=lambda _f, _j: None,  # type: ignore[arg-type,return-value]
        capabilities=capabilities,
    )
    outcome: list[Any] = []

    async def main() -> None:
        async def on_socket(sock: socket.socket, remote: str) -> None:
            framed = await wrap_accepted(sock)
            try:
                outcome.append(await server._read_batch(framed))
            except ProtocolError as exc:
                outcome.append(exc)
            finally:
                await framed.aclose()

        async with anyio.create_task_group() as tg:
            port = await tg.start(serve_framed, "127.0.0.1", 0, on_socket)
            client = await open_framed("127.0.0.1", port)
            await client.send_many([SMALL, Checkpoint(seq=1)])
            with anyio.fail_after(10):
                while not outcome:
                    await anyio.sleep(0.01)
            await client.aclose()
            tg.cancel_scope.cancel()

    anyio.run(main)
    return outcome[0]


def test_a_small_file_is_taken_by_a_server_that_announced_it() -> None:
    assert _read_one_batch(CAPABILITIES) == [SMALL, Checkpoint(seq=1)]


def test_a_small_file_to_a_server_that_did_not_announce_it_is_refused() -> None:
    error = _read_one_batch(())
    assert isinstance(error, ProtocolError)
    assert "not told this agent takes it (announced: nothing)" in str(error)
