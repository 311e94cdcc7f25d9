"""Chunk codecs: a relay re-encodes a chunk for its next hop's codec, within the decode limits."""

from __future__ import annotations

import os
import struct

import anyio
import pytest
import zstandard

from relaysync.constants import CHUNK_BYTES
from relaysync.errors import ProtocolError
from relaysync.transfer import codec as codec_module
from relaysync.transfer.codec import (
    Codec,
    Plain,
    Zstd,
    codec_for_level,
    decode_chunk,
    encode_chunk,
    recode_chunk,
)

TEXT = b"relaysync compresses repetitive text like this line, over and over again.\n" * 1000


def test_a_plain_chunk_is_compressed_for_a_zstd_hop() -> None:
    codec_id, payload = recode_chunk(Plain.ID, TEXT, codec_for_level(3))
    assert codec_id == Zstd.ID and len(payload) < len(TEXT) / 20
    assert decode_chunk(codec_id, payload) == TEXT


def test_a_zstd_chunk_goes_plain_on_a_level_0_hop() -> None:
    assert recode_chunk(*encode_chunk(TEXT, Zstd(3)), codec_for_level(0)) == (Plain.ID, TEXT)


def test_incompressible_data_goes_plain_on_a_zstd_hop() -> None:
    data = os.urandom(64 * 1024)
    codec_id, payload = recode_chunk(Plain.ID, data, Zstd(3))
    assert codec_id == Plain.ID and payload is data


@pytest.mark.parametrize("codec", [Plain(), Zstd(1)], ids=["plain", "zstd"])
def test_a_chunk_already_in_the_hops_codec_is_not_decoded(codec: Plain | Zstd) -> None:
    payload = b"not a zstd frame at all"  # decoding it would fail
    codec_id, out = recode_chunk(codec.ID, payload, codec)
    assert codec_id == codec.ID and out is payload


def test_recoding_keeps_the_decode_limits() -> None:
    bomb = zstandard.ZstdCompressor(level=19).compress(bytes(CHUNK_BYTES + 1))
    with pytest.raises(ProtocolError, match="announces"):
        recode_chunk(Zstd.ID, bomb, Plain())
    terabyte = (
        b"\x28\xb5\x2f\xfd" + bytes([0xC0, 0x00]) + struct.pack("<Q", 1 << 40) + b"\x01\x00\x00"
    )
    with pytest.raises(ProtocolError, match="announces"):
        recode_chunk(Zstd.ID, terabyte, Plain())
    with pytest.raises(ProtocolError, match="unknown codec"):
        recode_chunk(7, TEXT, Zstd(3))


def test_compression_contexts_grow_with_concurrency_not_links_times_threads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each link has its own codec and the send path runs in anyio's shared worker pool: contexts
    kept per codec and thread grew to links x threads (28-38 for 8 links, 169-229 MB at level 19)."""
    made: list[zstandard.ZstdCompressor] = []
    real = zstandard.ZstdCompressor

    def counting(*args: object, **kwargs: object) -> zstandard.ZstdCompressor:
        made.append(real(*args, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    monkeypatch.setattr(codec_module.zstandard, "ZstdCompressor", counting)
    data = os.urandom(1 << 14) * 16  # 256 KiB, compressible
    links, batches = 8, 12

    async def link(link_codec: Codec) -> None:
        for _ in range(batches):
            await anyio.to_thread.run_sync(encode_chunk, data, link_codec)
            await anyio.sleep(0)  # other links' batches interleave, as on a busy agent

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            for _ in range(links):
                tg.start_soon(link, codec_for_level(19))

    anyio.run(main)
    assert len(made) <= links, f"{len(made)} zstd contexts for {links} links"
