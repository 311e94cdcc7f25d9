"""The link session: one connected session of a `TargetLink`, reading the target's acks and replies."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NoReturn

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from relaysync.constants import RECEIVE_TIMEOUT_S
from relaysync.errors import PeerRefused, ProtocolError, SendWhole
from relaysync.protocol.framing import FramedStream
from relaysync.protocol.messages import (
    Ack,
    DigestReply,
    DigestRequest,
    DirListing,
    Error,
    ErrorCode,
    NodeMark,
    Partial,
    Ping,
    Pong,
)
from relaysync.transfer.moves import MovedAway
from relaysync.transfer.relay_unreadable import UnreadableTeller

if TYPE_CHECKING:
    from relaysync.transfer.sender import TargetLink


class _Session:
    """One connected session to a target."""

    def __init__(self, link: TargetLink, framed: FramedStream) -> None:
        self.link = link
        self.framed = framed
        self.acked = 0
        self.sent_upto = 0
        self.ack_changed = anyio.Event()
        self.moved = MovedAway()  # files found gone when sent, followed through later renames
        self.unreadable = UnreadableTeller()  # what the target was told of unreadable paths
        self.partials: tuple[
            Partial, ...
        ] = ()  # the target's partials, as it listed them at the start
        self.replies: tuple[
            MemoryObjectSendStream[DigestReply], MemoryObjectReceiveStream[DigestReply]
        ] = anyio.create_memory_object_stream[DigestReply](4)

    async def read_loop(self) -> None:
        """Read until the session fails. The replies' stream is never closed here: a compare
        waiting for a reply is cancelled with the session's task group, and the session ends
        with the read's own error (a target's refusal, say), not with an EndOfStream of the
        replies that was only its consequence, reported instead of it half the time."""
        while True:
            with anyio.fail_after(RECEIVE_TIMEOUT_S):
                message = await self.framed.receive()
            match message:
                case Ack():
                    self._on_ack(message.watermark, message.subtree)
                case DigestReply():
                    await self.replies[0].send(message)
                case Error():
                    self._refused(message)
                case Ping():
                    await self.framed.send(Pong(nonce=message.nonce))
                case Pong():
                    self.link.failures = 0  # idle and answering: a healthy session
                case _:
                    raise ProtocolError(f"unexpected {type(message).__name__} from target")

    def close(self) -> None:
        """Close the replies' stream, both ends, once the session's tasks are over."""
        for end in self.replies:
            end.close()

    def _refused(self, message: Error) -> NoReturn:
        """End the session at the target's Error. The target lacks a delta's base or a renamed
        file's version, or a delta did not rebuild the file: that change goes whole next time,
        and the first time (SendWhole) the link reconnects at once, not as a failed hop."""
        if message.code in (ErrorCode.BASE_MISMATCH, ErrorCode.HASH_MISMATCH):
            whole = self.link.options.whole_file_seqs
            first = message.seq not in whole  # refused whole too: a failed hop after all
            whole.add(message.seq)
            if first:
                raise SendWhole(message.detail, message.code.name)
        raise PeerRefused(message.detail, message.code.name)

    def _on_ack(self, watermark: int, subtree: Sequence[NodeMark] = ()) -> None:
        # A relay's targets below it: the source keeps changes until they commit. A target speaks
        # only for its own subtree in the routing table: a mark for any other node (a leaf naming
        # its sibling) would let it release changes that node lacks, or hold the journal for ever.
        below = self.link.source.below(self.link.target.node_id) if subtree else frozenset()
        for mark in subtree:
            if mark.node_id in below:
                self.link.source.on_ack(mark.node_id, mark.watermark)
        if watermark > self.acked:
            self.link.failures = 0  # progress
            self.acked = watermark
            # committed: sent again only to a target that lost it, which then refuses it again.
            # A copy to look through: the link's worker thread adds to it while it reads records.
            whole = self.link.options.whole_file_seqs
            whole.difference_update([seq for seq in whole.copy() if seq <= watermark])
            self.link.source.on_ack(self.link.target.node_id, watermark)
            self.ack_changed.set()
            self.ack_changed = anyio.Event()

    async def request_listings(
        self, dirs: Sequence[str], hashes_only: bool, after: str
    ) -> Sequence[DirListing]:
        await self.framed.send(
            DigestRequest(
                mapping_id=self.link.source.mapping_id,
                dirs=tuple(dirs),
                hashes_only=hashes_only,
                after=after,
            )
        )
        with anyio.fail_after(RECEIVE_TIMEOUT_S):
            reply = await self.replies[1].receive()
        if len(reply.listings) != len(dirs):
            raise ProtocolError("digest reply does not match the request")
        return reply.listings
