"""Recoding for another hop: file messages in its codec, in its message size, or streamed for an older peer."""

from __future__ import annotations

import msgspec

from relaysync.constants import CHUNK_BYTES
from relaysync.errors import ProtocolError
from relaysync.protocol.messages import AnyMessage, FileChunk, FileEnd, FileStart, SmallFile
from relaysync.transfer.codec import Codec, Plain, decode_chunk, encode_chunk, recode_chunk


def as_streamed(message: SmallFile) -> list[AnyMessage]:
    """The same file as FileStart, FileChunk, FileEnd: for a peer that does not take SmallFile
    (an older release; a relay forwards what its parent sent to children of any release)."""
    start = FileStart(
        seq=message.seq,
        path=message.path,
        size=message.size,
        mode=message.mode,
        mtime_ns=message.mtime_ns,
        base_hash=message.base_hash,
        changed_at=message.changed_at,
    )
    chunks = (
        [FileChunk(seq=message.seq, offset=0, data=message.data, codec=message.codec)]
        if message.size
        else []
    )
    return [start, *chunks, FileEnd(seq=message.seq, hash=message.hash)]


def recoded(message: AnyMessage, codec: Codec) -> AnyMessage:
    """The message with its file data in `codec`: a relay's next hop runs its own policy.

    Anything but a FileChunk or SmallFile (a delta's chunks are FileChunks too), or one whose
    data is already in `codec`, is returned as the very same object: a relay whose hops share a
    codec decodes nothing. So a zstd chunk stays as it came whatever the two hops' levels.
    Offsets, sizes and hashes describe the decoded data and never change. Data that does not
    decode (corrupt, or over its limit) goes as it came: the child refuses it, as it would have
    from our parent.
    """
    if not isinstance(message, FileChunk | SmallFile) or message.codec == codec.ID:
        return message
    max_bytes = (
        message.size if isinstance(message, SmallFile) else CHUNK_BYTES
    )  # the receiver's limits
    try:
        codec_id, data = recode_chunk(message.codec, message.data, codec, max_bytes)
    except ProtocolError:
        return message
    if isinstance(message, SmallFile) and codec_id == Plain.ID and len(data) != message.size:
        return message  # short: sent plain it would be malformed (never retried), not corrupt
    return msgspec.structs.replace(message, data=data, codec=codec_id)


def split_chunk(message: FileChunk, max_bytes: int, codec: Codec) -> list[FileChunk]:
    """The chunk as messages of at most `max_bytes` on the wire: a hop under a lower limit than
    the one the chunk was made for (a relay's child, a time window that started since).

    A chunk no larger is returned as it is. A larger one is decoded and cut into pieces of at
    most `max_bytes` of data, each ending on a multiple of `max_bytes` (a power of two dividing
    CHUNK_BYTES), so every boundary the chunk had stays one: a resume point (a whole number of
    CHUNK_BYTES) is still a message's start. Offsets follow the data (a delta part's first
    piece keeps offset 0, which starts the part). Nothing else describes the data per chunk:
    the receiver checks that offsets follow each other and FileEnd's hash covers the whole
    version, so pieces verify as the chunk would have. Each piece is encoded in `codec` as
    `encode_chunk` does. Data that does not decode goes as it came (the peer refuses it).
    """
    if len(message.data) <= max_bytes:
        return [message]
    try:
        data = decode_chunk(message.codec, message.data)
    except ProtocolError:
        return [message]
    pieces: list[FileChunk] = []
    start = 0
    while start < len(data):
        end = min(
            len(data),
            (message.offset + start) // max_bytes * max_bytes + max_bytes - message.offset,
        )
        codec_id, payload = encode_chunk(data[start:end], codec)
        pieces.append(
            FileChunk(seq=message.seq, offset=message.offset + start, data=payload, codec=codec_id)
        )
        start = end
    return pieces
