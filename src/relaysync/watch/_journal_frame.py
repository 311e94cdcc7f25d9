"""The on-disk frame of a journal record: u32 length | u32 crc32(payload) | msgpack(record)."""

from __future__ import annotations

import struct
import zlib
from typing import BinaryIO

import msgspec

from relaysync.errors import JournalCorrupt
from relaysync.watch.changes import JournalRecord

_HEADER = struct.Struct(">II")
_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(JournalRecord).decode


class _TornTail(Exception):
    """Internal: a frame at `offset` is incomplete or bad and nothing good follows it."""

    def __init__(self, offset: int, reason: str) -> None:
        super().__init__(offset, reason)
        self.offset = offset
        self.reason = reason


def _frame(record: JournalRecord) -> bytes:
    payload = _encode(record)
    return _HEADER.pack(len(payload), zlib.crc32(payload)) + payload


def _read_frame(f: BinaryIO, offset: int, name: str) -> tuple[JournalRecord, int] | None:
    """Read the frame at the current position; return (record, next offset) or None at EOF.

    Raises _TornTail for an incomplete or bad frame that nothing good follows, JournalCorrupt
    for a bad frame followed by a good one.
    """
    header = f.read(_HEADER.size)
    if not header:
        return None
    if len(header) < _HEADER.size:
        raise _TornTail(offset, "short header")
    length, crc = _HEADER.unpack(header)
    payload = f.read(length)
    if len(payload) < length:
        raise _TornTail(offset, "short record")
    try:
        if zlib.crc32(payload) != crc:
            raise ValueError("crc mismatch")
        return _decode(payload), offset + _HEADER.size + length
    except (ValueError, msgspec.DecodeError) as exc:
        if _good_frame_follows(f):
            raise JournalCorrupt(name, offset, str(exc)) from exc
        raise _TornTail(offset, str(exc)) from exc


def _good_frame_follows(f: BinaryIO) -> bool:
    header = f.read(_HEADER.size)
    if len(header) < _HEADER.size:
        return False
    length, crc = _HEADER.unpack(header)
    payload = f.read(length)
    return bool(length > 0 and len(payload) == length and zlib.crc32(payload) == crc)
