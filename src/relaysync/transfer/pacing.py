"""Paced sending: a batch of messages put on a link under its bandwidth limit.

A message goes out at line rate once it is on the socket, so it is paid for before it goes
(`TokenBucket.consume`), and no message is larger than the limit's message size
(`TokenBucket.chunk_bytes`): a chunk made for a higher limit (read ahead before a time window
started, or forwarded by a relay from a faster hop) is cut first (`recoding.split_chunk`).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Protocol

import anyio

from relaysync.constants import CHUNK_BYTES
from relaysync.protocol.messages import AnyMessage, FileChunk
from relaysync.transfer import ops, recoding
from relaysync.transfer.bandwidth import TokenBucket
from relaysync.transfer.codec import Codec


class Wire(Protocol):
    """What pacing needs of a framed stream (protocol/framing.py)."""

    @property
    def bytes_sent(self) -> int: ...

    async def send_many(self, messages: list[AnyMessage]) -> None: ...


async def send_paced(wire: Wire, batch: list[AnyMessage], limit: TokenBucket, codec: Codec) -> None:
    """Send `batch` in runs of at most one message's worth, each paid for before it goes, so
    a limit holds from its first second and a short transfer stays within its credit of it.

    Chunks larger than the limit's message size are cut first, in a worker thread (it may
    decode and encode), into pieces in `codec`.
    """
    step = limit.chunk_bytes(CHUNK_BYTES)
    if any(isinstance(m, FileChunk) and len(m.data) > step for m in batch):
        batch = await anyio.to_thread.run_sync(_split_chunks, batch, step, codec)
    for group, size in _groups(batch, step):
        await limit.consume(size)
        before = wire.bytes_sent
        await wire.send_many(group)
        extra = wire.bytes_sent - before - size  # framing beyond the estimate (long paths)
        if extra > 0:
            await limit.consume(extra)


def _groups(batch: list[AnyMessage], max_bytes: int) -> Iterator[tuple[list[AnyMessage], int]]:
    """`batch` in runs of at most `max_bytes` (a larger message alone), each with its size."""
    group: list[AnyMessage] = []
    size = 0
    for message in batch:
        n = ops.message_bytes(message)
        if group and size + n > max_bytes:
            yield group, size
            group, size = [], 0
        group.append(message)
        size += n
    if group:
        yield group, size


def _split_chunks(batch: list[AnyMessage], step: int, codec: Codec) -> list[AnyMessage]:
    return [
        piece
        for m in batch
        for piece in (recoding.split_chunk(m, step, codec) if isinstance(m, FileChunk) else (m,))
    ]
