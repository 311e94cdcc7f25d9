"""Compression codecs for file chunks, keyed by the id byte carried in each FileChunk.

zstd is applied per chunk at the link's level; a chunk that does not shrink is sent plain, so
incompressible data costs one probe per chunk and nothing on the wire.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator
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


class _ContextPool:
    """zstd contexts lent to one call at a time (they are not thread-safe), shared by every link.

    A context is large (about 2.6 MB at level 3, 19 MB at level 19 for 1 MiB chunks), so one per
    link and worker thread would grow with links x threads; the pool holds what the busiest
    moment needed, at most `keep` idle per level.
    """

    def __init__(self, keep: int = 8) -> None:
        self._keep = keep
        self._lock = threading.Lock()
        self._idle: dict[int, list[zstandard.ZstdCompressor]] = {}
        self._decompressors: list[zstandard.ZstdDecompressor] = []

    @contextlib.contextmanager
    def compressor(self, level: int) -> Iterator[zstandard.ZstdCompressor]:
        with self._lock:
            idle = self._idle.setdefault(level, [])
            ctx = idle.pop() if idle else None
        if ctx is None:
            ctx = zstandard.ZstdCompressor(level=level)
        try:
            yield ctx
        finally:
            with self._lock:
                if len(idle) < self._keep:
                    idle.append(ctx)

    @contextlib.contextmanager
    def decompressor(self) -> Iterator[zstandard.ZstdDecompressor]:
        with self._lock:
            ctx = self._decompressors.pop() if self._decompressors else None
        if ctx is None:
            ctx = zstandard.ZstdDecompressor()
        try:
            yield ctx
        finally:
            with self._lock:
                if len(self._decompressors) < self._keep:
                    self._decompressors.append(ctx)


_POOL = _ContextPool()


class Zstd(Codec):
    ID = 3
    name = "zstd"

    def __init__(self, level: int = 3, pool: _ContextPool = _POOL) -> None:
        self.level = level
        self._pool = pool

    def compress(self, data: bytes) -> bytes:
        with self._pool.compressor(self.level) as ctx:
            return ctx.compress(data)

    def decompress(self, data: bytes, max_bytes: int = CHUNK_BYTES) -> bytes:
        """The frame's content, at most `max_bytes` of it, else ProtocolError.

        A frame that states its content size is checked before anything is allocated: zstd
        ignores `max_output_size` for those, and 8 KB on the wire can announce gigabytes.
        """
        try:
            announced = zstandard.frame_content_size(data)
            if announced > max_bytes:
                raise ProtocolError(
                    f"zstd codec: a chunk announces {announced} bytes, over {max_bytes}"
                )
            with self._pool.decompressor() as ctx:
                return ctx.decompress(data, max_output_size=max_bytes)
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


def recode_chunk(
    codec_id: int, payload: bytes, codec: Codec, max_bytes: int = CHUNK_BYTES
) -> tuple[int, bytes]:
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
