"""Chunk codecs: a relay re-encodes a chunk for its next hop's codec, within the decode limits."""

from __future__ import annotations

import os
import struct

import pytest
import zstandard

from relaysync.constants import CHUNK_BYTES
from relaysync.errors import ProtocolError
from relaysync.transfer.codec import (
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
    terabyte = b"\x28\xb5\x2f\xfd" + bytes([0xC0, 0x00]) + struct.pack("<Q", 1 << 40) + b"\x01\x00\x00"
    with pytest.raises(ProtocolError, match="announces"):
        recode_chunk(Zstd.ID, terabyte, Plain())
    with pytest.raises(ProtocolError, match="unknown codec"):
        recode_chunk(7, TEXT, Zstd(3))
