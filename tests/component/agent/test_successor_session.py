"""A link that restarts mid-file, over real sockets to a peer server (plain link): the sessions
before the newest one end and let go of the large file's partial, and the newest resumes it."""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
import xxhash
from tests.component.agent._pair import SECRET, SRC, TGT, peer_server, target_folder

from relaysync.agent.peer_server import PeerServer
from relaysync.constants import CHUNK_BYTES, TEMP_PREFIX
from relaysync.protocol.framing import FramedStream
from relaysync.protocol.handshake import client_hello
from relaysync.protocol.messages import (
    Ack,
    AuthChallenge,
    AuthResponse,
    Checkpoint,
    FileChunk,
    FileEnd,
    FileStart,
    MappingState,
    OpenMapping,
    Ping,
    Pong,
)
from relaysync.transfer import tls
from relaysync.transfer.receiver import ReceiverSession

SIZE = 12 * CHUNK_BYTES
MTIME = 1_700_000_000_000_000_000
WAIT_S = 20.0  # generous bound for each condition the test polls


async def _open(port: int) -> tuple[FramedStream, MappingState]:
    """A source's session of mapping 1, up to the target's MappingState."""
    framed = await tls.connect_plain(f"127.0.0.1:{port}")
    await client_hello(framed, node_id=SRC, name="s")
    await framed.send(OpenMapping(mapping_id=1, journal_id="j"))
    challenge = await framed.receive()
    assert isinstance(challenge, AuthChallenge)
    await framed.send(AuthResponse(mac=tls.link_mac(SECRET, challenge.nonce, 1, SRC, TGT)))
    state = await framed.receive()
    assert isinstance(state, MappingState)
    return framed, state


def _file(data: bytes, offset: int, end: int) -> list[FileStart | FileChunk]:
    start = FileStart(
        seq=1,
        path="big.bin",
        size=len(data),
        mode=0o644,
        mtime_ns=MTIME,
        expected_hash=xxhash.xxh3_128_digest(data),
        offset=offset,
    )
    chunks = [
        FileChunk(seq=1, offset=o, data=data[o : o + CHUNK_BYTES])
        for o in range(offset, end, CHUNK_BYTES)
    ]
    return [start, *chunks]


async def _poll(condition: Callable[[], bool], what: str) -> None:
    with anyio.move_on_after(WAIT_S):
        while not condition():
            await anyio.sleep(0.02)
        return
    raise AssertionError(f"not within {WAIT_S} s: {what}")


def _partial_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.iterdir() if p.name.startswith(TEMP_PREFIX))


def test_two_successors_of_a_session_leave_one_receiving_and_it_resumes_the_partial(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Session A receives 5 MiB of a 12 MiB file; its link restarts twice in a row (B, then C)
    while A's thread has not yet let go. Both successors waited for A to end; when it did, both
    went on receiving (the second replaced the first in the server's table without ending it),
    each with the partial open, until the first one's link timed out. Now the newest ends the
    one before, and resumes A's partial where A stopped."""
    folder = target_folder(tmp_path)
    data = os.urandom(SIZE)
    sessions: list[ReceiverSession] = []
    closed: list[ReceiverSession] = []
    let_go = threading.Event()
    real_init, real_close = ReceiverSession.__init__, ReceiverSession.close

    def init(self: ReceiverSession, *args: object) -> None:
        real_init(self, *args)  # type: ignore[arg-type]
        sessions.append(self)

    def close(self: ReceiverSession) -> None:
        if self is sessions[0]:
            let_go.wait(WAIT_S)  # A's thread is slow to let go
        real_close(self)
        closed.append(self)

    monkeypatch.setattr(ReceiverSession, "__init__", init)
    monkeypatch.setattr(ReceiverSession, "close", close)
    ends: list[int] = []
    real_end = PeerServer._end_session

    async def end_session(self: PeerServer, mapping_id: int) -> bool:
        ends.append(mapping_id)
        return await real_end(self, mapping_id)

    monkeypatch.setattr(PeerServer, "_end_session", end_session)
    clients: list[FramedStream] = []
    states: dict[int, MappingState] = {}
    opened: list[bool] = []

    async def successor() -> None:
        try:
            framed, state = await _open(port)
        except Exception:  # noqa: BLE001 - ended by the one after it before its MappingState
            opened.append(False)
            return
        clients.append(framed)
        states[id(framed)] = state
        opened.append(True)

    async def main() -> None:
        nonlocal port
        async with anyio.create_task_group() as tg:
            server = peer_server(folder)
            port = await tg.start(server.serve)
            first, _ = await _open(port)
            clients.append(first)
            await first.send_many(_file(data, 0, 5 * CHUNK_BYTES))  # type: ignore[arg-type]
            await _poll(lambda: _partial_bytes(folder.root) >= 5 * CHUNK_BYTES, "A's 5 MiB")
            tg.start_soon(successor)
            await _poll(lambda: len(ends) >= 1, "B waiting for A")
            tg.start_soon(successor)
            await _poll(lambda: len(ends) >= 2, "C waiting for A")
            let_go.set()
            # A ends, then B (ended by C, before or after its receiver was made): one is left.
            await _poll(
                lambda: len(opened) == 2 and all(s in closed for s in sessions[:-1]),
                "the sessions before the newest closed",
            )
            assert sessions[-1] not in closed
            current = server._streams[1].extra("peername")
            (survivor,) = [c for c in clients if c.extra("sockname") == current]
            partials = [(p.path, p.size) for p in states[id(survivor)].partials]
            assert partials == [("big.bin", 5 * CHUNK_BYTES)]  # what A received: not sent again
            await survivor.send_many(
                [
                    *_file(data, 5 * CHUNK_BYTES, SIZE),
                    FileEnd(seq=1, hash=xxhash.xxh3_128_digest(data)),
                    Checkpoint(seq=1),
                ]
            )
            with anyio.fail_after(WAIT_S):
                while not isinstance(reply := await survivor.receive(), Ack):
                    if isinstance(reply, Ping):
                        await survivor.send(Pong(nonce=reply.nonce))
            assert reply.watermark == 1
            for c in clients:
                await c.aclose()
            tg.cancel_scope.cancel()

    port = 0
    anyio.run(main)
    assert (folder.root / "big.bin").read_bytes() == data
    assert [p.name for p in folder.root.iterdir()] == ["big.bin"]
