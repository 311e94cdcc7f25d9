"""Journal records to wire ops: every op carries the time its record was journaled; small files
travel whole in one message, larger ones as start, chunks and end; a relay re-encodes file data
for its next hop's codec."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import xxhash

from relaysync.constants import SMALL_FILE_BYTES
from relaysync.protocol.messages import (
    Delete,
    FileAbort,
    FileChunk,
    FileEnd,
    FileStart,
    MakeDir,
    Rename,
    SmallFile,
)
from relaysync.transfer import ops as ops_module
from relaysync.transfer import recoding
from relaysync.transfer.codec import Plain, Zstd, codec_for_level, decode_chunk
from relaysync.transfer.ops import SendOptions, iter_file_messages, record_messages
from relaysync.watch.changes import JournalRecord
from relaysync.watch.manifest import Entry

SMALL = SendOptions(small_files=True)  # a peer whose Hello announced small_file


def test_ops_carry_the_journal_time(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"data")
    at_ns = 1_700_000_000_500_000_000
    records = [
        JournalRecord(seq=1, op="write", path="f", time_ns=at_ns),
        JournalRecord(
            seq=2, op="mkdir", path="d", entry=Entry(path="d", kind="d", mode=0o755), time_ns=at_ns
        ),
        JournalRecord(seq=3, op="rename", path="f", new_path="g", time_ns=at_ns),
        JournalRecord(seq=4, op="delete", path="g"),  # a journal written before times were kept
    ]
    ops = [m for r in records for m in record_messages(tmp_path, r, SendOptions(small_files=True))]
    starts = [m for m in ops if isinstance(m, SmallFile | MakeDir | Rename | Delete)]
    assert [(type(m).__name__, m.changed_at) for m in starts] == [
        ("SmallFile", 1_700_000_000.5),
        ("MakeDir", 1_700_000_000.5),
        ("Rename", 1_700_000_000.5),
        ("Delete", 0.0),
    ]


@pytest.mark.parametrize("size", [0, 1, 4096, SMALL_FILE_BYTES])
def test_a_small_file_is_one_message_with_its_hash(tmp_path: Path, size: int) -> None:
    data = os.urandom(size)
    (tmp_path / "f").write_bytes(data)
    os.chmod(tmp_path / "f", 0o640)
    (msg,) = iter_file_messages(
        tmp_path, "f", 7, base_hash=b"b" * 16, changed_at=5.0, options=SMALL
    )
    assert isinstance(msg, SmallFile)
    msg.validate()
    assert (msg.seq, msg.path, msg.size, msg.mode, msg.data, msg.codec) == (
        7,
        "f",
        size,
        0o640,
        data,
        0,
    )
    assert (
        msg.hash == xxhash.xxh3_128_digest(data)
        and msg.base_hash == b"b" * 16
        and msg.changed_at == 5.0
    )


def test_a_file_above_the_small_limit_streams_as_start_chunks_end(tmp_path: Path) -> None:
    data = os.urandom(SMALL_FILE_BYTES + 1)
    (tmp_path / "f").write_bytes(data)
    out = list(iter_file_messages(tmp_path, "f", 3, options=SMALL))
    assert [type(m) for m in out] == [FileStart, FileChunk, FileEnd]
    assert out[1].data == data and out[2].hash == xxhash.xxh3_128_digest(data)


@pytest.mark.parametrize(
    "options", [SendOptions(small_files=False), None], ids=["older release", "no Hello"]
)
def test_a_peer_that_does_not_take_small_files_gets_start_chunk_end(
    tmp_path: Path, options: SendOptions
) -> None:
    """An older release (no small_file in its Hello), or options never set from a Hello: the
    same file, streamed as before."""
    data = os.urandom(4096)
    (tmp_path / "f").write_bytes(data)
    out = list(iter_file_messages(tmp_path, "f", 3, options=options))
    assert [type(m) for m in out] == [FileStart, FileChunk, FileEnd]
    assert out[1].data == data and out[2].hash == xxhash.xxh3_128_digest(data)


def test_a_small_file_is_compressed_by_the_link_codec(tmp_path: Path) -> None:
    text = b"relaysync sends small text files whole, compressed when it pays.\n" * 500
    (tmp_path / "t.txt").write_bytes(text)
    (msg,) = iter_file_messages(
        tmp_path, "t.txt", 1, options=SendOptions(codec=codec_for_level(3), small_files=True)
    )
    assert isinstance(msg, SmallFile) and msg.codec == Zstd.ID and len(msg.data) < len(text) / 10
    assert decode_chunk(msg.codec, msg.data) == text and msg.hash == xxhash.xxh3_128_digest(text)


def test_a_small_file_that_grows_while_read_is_aborted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"x" * 100)
    real_pread = os.pread

    def pread_then_grow(fd: int, n: int, offset: int) -> bytes:
        with open(path, "ab") as f:  # the writer appends between the source's fstat and its read
            f.write(b"more")
        return real_pread(fd, n, offset)

    monkeypatch.setattr(ops_module.os, "pread", pread_then_grow)
    (msg,) = iter_file_messages(tmp_path, "f", 9, options=SMALL)
    assert isinstance(msg, FileAbort) and msg.seq == 9


# --- A relay's next hop runs its own codec (recoding.recoded) ---

TEXT = b"relaysync compresses repetitive text like this line, over and over again.\n" * 800


def _small(data: bytes, codec: int, size: int | None = None) -> SmallFile:
    return SmallFile(
        seq=3,
        path="s",
        size=len(TEXT) if size is None else size,
        mode=0o644,
        mtime_ns=1,
        data=data,
        hash=xxhash.xxh3_128_digest(TEXT),
        codec=codec,
        base_hash=b"b" * 16,
        changed_at=2.5,
    )


def test_a_plain_chunk_is_compressed_for_a_zstd_hop_and_keeps_its_offset() -> None:
    chunk = FileChunk(seq=3, offset=5 * 1024 * 1024, data=TEXT)
    out = recoding.recoded(chunk, codec_for_level(3))
    assert isinstance(out, FileChunk) and out.codec == Zstd.ID and len(out.data) < len(TEXT) / 20
    assert (out.seq, out.offset) == (chunk.seq, chunk.offset) and decode_chunk(
        out.codec, out.data
    ) == TEXT
    out.validate()


def test_a_zstd_small_file_goes_plain_on_a_level_0_hop_with_its_size_and_hash() -> None:
    small = _small(Zstd(3).compress(TEXT), Zstd.ID)
    out = recoding.recoded(small, codec_for_level(0))
    assert out == _small(TEXT, Plain.ID)
    out.validate()


def test_incompressible_data_goes_plain_on_a_zstd_hop() -> None:
    data = os.urandom(64 * 1024)
    chunk = FileChunk(seq=3, offset=0, data=data)
    out = recoding.recoded(chunk, codec_for_level(3))
    assert out == chunk and out.data is data


@pytest.mark.parametrize("level", [0, 3], ids=["plain", "zstd"])
def test_a_message_already_in_the_hops_codec_is_the_very_same_object(level: int) -> None:
    codec = codec_for_level(level)
    data = (
        TEXT if codec.ID == Plain.ID else Zstd(19).compress(TEXT)
    )  # another level: still not decoded
    for message in (
        FileChunk(seq=3, offset=0, data=data, codec=codec.ID),
        _small(data, codec.ID),
        FileEnd(seq=3, hash=b"h" * 16),
        Delete(seq=3, path="d"),
    ):
        assert recoding.recoded(message, codec) is message


def test_data_that_does_not_decode_goes_as_it_came() -> None:
    """Corrupt, or over the receiver's limit: the child refuses it, as it would from our parent."""
    corrupt = FileChunk(seq=3, offset=0, data=b"\x28\xb5\x2f\xfd garbage", codec=Zstd.ID)
    assert recoding.recoded(corrupt, codec_for_level(0)) is corrupt
    over = _small(Zstd(3).compress(TEXT), Zstd.ID, size=100)  # decodes to more than its size
    assert recoding.recoded(over, codec_for_level(0)) is over
