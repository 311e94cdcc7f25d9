"""A target's side of a peer session while it receives: the next batch read off the connection
while the previous one is applied (`ReadAhead`), and the pings that keep a slow sender waiting
(`keep_sender_waiting`). Used by agent/peer_server.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

import anyio

from relaysync.constants import PING_INTERVAL_S
from relaysync.protocol.framing import FramedStream
from relaysync.protocol.messages import AnyMessage, Ping


async def keep_sender_waiting(framed: FramedStream) -> None:
    """Ping the sender whenever we have sent it nothing for PING_INTERVAL_S.

    A target answers a batch only at its Checkpoint; a batch that takes longer than the
    sender's RECEIVE_TIMEOUT_S to arrive (a bandwidth limit, a slow link, a large file) must not
    look like a dead target, or the sender would drop the session and send the batch again, for
    ever. A sender of any release answers a Ping with a Pong.
    """
    last = framed.bytes_sent
    while True:
        await anyio.sleep(PING_INTERVAL_S)
        if framed.bytes_sent == last:
            await framed.send(Ping())
        last = framed.bytes_sent


class ReadAhead:
    """Reads the next batch off the connection while the previous one is applied.

    Decoding (and TLS) on the event loop overlaps the disk writes in the worker thread; one
    batch waits at most, so memory stays bounded by three batches. When the connection ends,
    the batches already read are still applied before the error is raised.
    """

    def __init__(
        self,
        framed: FramedStream,
        read_batch: Callable[[FramedStream, int], Awaitable[list[AnyMessage]]],
        max_bytes: int,
    ) -> None:
        self._framed, self._read_batch, self._max_bytes = framed, read_batch, max_bytes
        self._tx, self._rx = anyio.create_memory_object_stream[list[AnyMessage]](1)
        self._error: BaseException | None = None

    async def run(self) -> None:
        async with self._tx:
            try:
                while True:
                    await self._tx.send(await self._read_batch(self._framed, self._max_bytes))
            except Exception as exc:  # noqa: BLE001 - raised by the consumer once it has drained
                self._error = exc

    def __aiter__(self) -> AsyncIterator[list[AnyMessage]]:
        return self._rx.__aiter__()

    def raise_error(self) -> None:
        if self._error is not None:
            raise self._error
