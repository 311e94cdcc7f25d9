import struct

import anyio
import pytest

from relaysync.errors import FrameTooLarge, ProtocolError
from relaysync.protocol.framing import FramedStream, decode_payload, encode_frame
from relaysync.protocol.messages import FileChunk, FileEnd, FileStart, Hello


def test_round_trip() -> None:
    m = FileStart(seq=1, path="a/b", size=3, mode=0o644, mtime_ns=7)
    assert decode_payload(encode_frame(m)[4:]) == m


@pytest.mark.parametrize("payload", [b"", b"\xc1", b"\x81\xa4type\xa4nope"])
def test_garbage_refused(payload: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_payload(payload)


def test_validate_runs_after_decode() -> None:
    bad = FileEnd(seq=1, hash=b"short")
    with pytest.raises(ProtocolError):
        decode_payload(encode_frame(bad)[4:])
    with pytest.raises(ProtocolError):
        decode_payload(encode_frame(FileChunk(seq=1, offset=-1, data=b""))[4:])


class _Pieces:
    """A byte stream that yields the given pieces, then end of stream."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = pieces

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self.pieces:
            raise anyio.EndOfStream
        return self.pieces.pop(0)


def test_oversize_frame_refused_before_reading_it() -> None:
    async def main() -> None:
        framed = FramedStream(_Pieces([struct.pack(">I", 10_000_000)]), max_message_bytes=1024)  # type: ignore[arg-type]
        with pytest.raises(FrameTooLarge):
            await framed.receive()

    anyio.run(main)


def test_frames_split_across_reads() -> None:
    async def main() -> None:
        frame = encode_frame(Hello(protocol_version=1, node_id="n", name="x", role="agent")) * 2
        framed = FramedStream(_Pieces([frame[i : i + 1] for i in range(len(frame))]))  # type: ignore[arg-type]
        assert isinstance(await framed.receive(), Hello)
        assert isinstance(await framed.receive(), Hello)
        with pytest.raises(anyio.EndOfStream):
            await framed.receive()

    anyio.run(main)


def test_change_time_is_optional_on_the_wire_and_checked() -> None:
    import msgspec

    # a peer that predates changed_at sends ops without it: they decode with 0 (unknown)
    old = msgspec.msgpack.encode({"type": "delete", "seq": 3, "path": "a"})
    decoded = decode_payload(old)
    assert decoded.changed_at == 0.0  # type: ignore[union-attr]
    m = FileStart(seq=1, path="a", size=0, mode=0o644, mtime_ns=0, changed_at=1_700_000_000.25)
    assert decode_payload(encode_frame(m)[4:]) == m
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(ProtocolError, match="changed_at"):
            decode_payload(encode_frame(FileStart(seq=1, path="a", size=0, mode=0, mtime_ns=0,
                                                  changed_at=bad))[4:])
