"""Length-prefixed frames of msgpack messages over a byte stream, with a size cap.

A frame is a 4-byte big-endian length, then that many bytes of one msgpack-encoded message.
Frames over MAX_MESSAGE_BYTES, undecodable bytes and messages failing `validate()` raise
ProtocolError: the caller closes the connection.
"""

from __future__ import annotations

import struct

import anyio
import msgspec
from anyio.abc import ByteStream

from relaysync.constants import MAX_MESSAGE_BYTES
from relaysync.errors import FrameTooLarge, ProtocolError
from relaysync.protocol.messages import DECODER, ENCODER, AnyMessage

_HEADER = struct.Struct(">I")


def encode_frame(message: AnyMessage) -> bytes:
    """Return the frame for `message` (header and payload)."""
    payload = ENCODER.encode(message)
    return _HEADER.pack(len(payload)) + payload


def decode_payload(payload: bytes | memoryview) -> AnyMessage:
    """Decode and validate one payload.

    Raises:
        ProtocolError: undecodable or invalid.
    """
    try:
        message = DECODER.decode(payload)
    except msgspec.DecodeError as exc:
        raise ProtocolError(f"undecodable frame: {exc}") from exc
    message.validate()
    return message


class FramedStream:
    """Reads and writes whole messages on a byte stream (TCP or TLS)."""

    def __init__(self, stream: ByteStream, *, max_message_bytes: int = MAX_MESSAGE_BYTES) -> None:
        self.stream = stream
        self._buffer = bytearray()
        self._max = max_message_bytes
        self.bytes_sent = 0
        self.bytes_received = 0
        self.last_frame_bytes = 0
        self._send_lock = anyio.Lock()

    async def send(self, message: AnyMessage) -> None:
        frame = encode_frame(message)
        async with self._send_lock:
            await self.stream.send(frame)
        self.bytes_sent += len(frame)

    async def send_many(self, messages: list[AnyMessage]) -> None:
        """Send several messages in one write (fewer TLS records and syscalls)."""
        frame = b"".join(encode_frame(m) for m in messages)
        async with self._send_lock:
            await self.stream.send(frame)
        self.bytes_sent += len(frame)

    async def _fill(self, size: int) -> None:
        while len(self._buffer) < size:
            try:
                data = await self.stream.receive(max(65536, size - len(self._buffer)))
            except (anyio.EndOfStream, anyio.ClosedResourceError, anyio.BrokenResourceError):
                raise
            self._buffer += data
            self.bytes_received += len(data)

    async def receive(self) -> AnyMessage:
        """Return the next message.

        Raises:
            anyio.EndOfStream: the peer closed the connection cleanly.
            FrameTooLarge, ProtocolError: a bad frame; close the connection.
        """
        await self._fill(_HEADER.size)
        (length,) = _HEADER.unpack_from(self._buffer)
        if length > self._max:
            raise FrameTooLarge(length, self._max)
        await self._fill(_HEADER.size + length)
        self.last_frame_bytes = _HEADER.size + length
        payload = bytes(self._buffer[_HEADER.size : _HEADER.size + length])
        del self._buffer[: _HEADER.size + length]
        return decode_payload(payload)

    async def aclose(self) -> None:
        await self.stream.aclose()
