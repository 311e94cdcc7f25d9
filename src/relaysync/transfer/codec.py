"""Compression codecs for file chunks, keyed by the id byte carried in each FileChunk.

zstd is applied per chunk at the link's level; a chunk that does not shrink is sent plain, so
incompressible data costs one probe per chunk and nothing on the wire.
"""

from __future__ import annotations

import threading
from typing import ClassVar

import zstandard

from relaysync.constants import CHUNK_BYTES
from relaysync.errors import ProtocolError


class Codec:
    ID: ClassVar[int]
    name: ClassVar[str]

    def compress(self, data: bytes) -> bytes:
        raise NotImplementedError

    def decompress(self, data: bytes, max_bytes: int = CHUNK_BYTES) -> bytes:
        raise NotImplementedError


class Plain(Codec):
    ID = 0
    name = "plain"

    def compress(self, data: bytes) -> bytes:
        return data

    def decompress(self, data: bytes, max_bytes: int = CHUNK_BYTES) -> bytes:
        return data


class Zstd(Codec):
    ID = 3
    name = "zstd"

    def __init__(self, level: int = 3) -> None:
        self.level = level
        self._local = threading.local()  # zstd contexts are not thread-safe; reuse one per thread

    def _contexts(self) -> tuple[zstandard.ZstdCompressor, zstandard.ZstdDecompressor]:
        ctx = getattr(self._local, "ctx", None)
        if ctx is None:
            ctx = (zstandard.ZstdCompressor(level=self.level), zstandard.ZstdDecompressor())
            self._local.ctx = ctx
        return ctx

    def compress(self, data: bytes) -> bytes:
        return self._contexts()[0].compress(data)

    def decompress(self, data: bytes, max_bytes: int = CHUNK_BYTES) -> bytes:
        """The frame's content, at most `max_bytes` of it, else ProtocolError.

        A frame that states its content size is checked before anything is allocated: zstd
        ignores `max_output_size` for those, and 8 KB on the wire can announce gigabytes.
        """
        try:
            announced = zstandard.frame_content_size(data)
            if announced > max_bytes:
                raise ProtocolError(f"zstd codec: a chunk announces {announced} bytes, over {max_bytes}")
            return self._contexts()[1].decompress(data, max_output_size=max_bytes)
        except zstandard.ZstdError as exc:
            raise ProtocolError(f"zstd codec: decompress: {exc}") from exc


CODECS: dict[int, type[Codec]] = {c.ID: c for c in (Plain, Zstd)}
_DECODERS: dict[int, Codec] = {Plain.ID: Plain(), Zstd.ID: Zstd()}


def encode_chunk(data: bytes, codec: Codec) -> tuple[int, bytes]:
    """Return (codec id, payload): compressed if that makes it smaller, else plain."""
    if codec.ID == Plain.ID or not data:
        return Plain.ID, data
    packed = codec.compress(data)
    if len(packed) >= len(data):
        return Plain.ID, data
    return codec.ID, packed


def decode_chunk(codec_id: int, payload: bytes, max_bytes: int = CHUNK_BYTES) -> bytes:
    """Return the original bytes of a chunk, refusing more than `max_bytes` of them.

    Raises:
        ProtocolError: unknown codec id, corrupt payload, or more than `max_bytes` decoded.
    """
    decoder = _DECODERS.get(codec_id)
    if decoder is None:
        raise ProtocolError(f"unknown codec id {codec_id}")
    return decoder.decompress(payload, max_bytes)


def recode_chunk(codec_id: int, payload: bytes, codec: Codec, max_bytes: int = CHUNK_BYTES) -> tuple[int, bytes]:
    """Return (codec id, payload) of a chunk for a link that runs `codec` (a relay's next hop).

    A payload already in `codec` is returned as it is, without decoding. Any other is decoded
    (at most `max_bytes`, as `decode_chunk`) and encoded again as `encode_chunk` does, so data
    that does not shrink goes plain.

    Raises:
        ProtocolError: unknown codec id, corrupt payload, or more than `max_bytes` decoded.
    """
    if codec_id == codec.ID:
        return codec_id, payload
    return encode_chunk(decode_chunk(codec_id, payload, max_bytes), codec)


def codec_for_level(level: int) -> Codec:
    """zstd at `level`, or plain for level 0."""
    return Zstd(level) if level > 0 else Plain()
