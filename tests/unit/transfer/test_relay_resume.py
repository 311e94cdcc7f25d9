"""Resume through a relay (RelayLink._forward with transfer/relay_resume.py): a child that holds
part of a large file gets only what it lacks from the spool, at most one chunk again, whatever
the chunk sizes and codecs, and still commits exactly the source's bytes."""

from __future__ import annotations

import os
from typing import Any

import anyio
import pytest
import xxhash

from relaysync.constants import CHUNK_BYTES
from relaysync.protocol.messages import (
    Ack,
    AnyMessage,
    Checkpoint,
    FileAbort,
    FileChunk,
    FileEnd,
    FileStart,
    Ping,
)
from relaysync.transfer import ops
from relaysync.transfer.codec import Zstd, codec_for_level, decode_chunk, encode_chunk
from relaysync.transfer.receiver import ReceiverSession, TargetFolder
from relaysync.transfer.relay import RefusedDelta, RelayLink
from relaysync.transfer.relay_resume import ResumeCut

SEQ = 7
KIB = 1024
SIZE = 10 * CHUNK_BYTES  # over RESUME_MIN_BYTES: the child keeps a named partial
MTIME = 1_700_000_000_000_000_000


class _Framed:
    def __init__(self) -> None:
        self.pings = 0

    async def send(self, message: AnyMessage) -> None:
        assert isinstance(message, Ping)
        self.pings += 1


class _Session:
    sent_upto = SEQ - 1

    def __init__(self) -> None:
        self.framed = _Framed()


def _data() -> bytes:
    return os.urandom(SIZE)


def _start(data: bytes, offset: int = 0) -> FileStart:
    return FileStart(seq=SEQ, path="big.bin", size=len(data), mode=0o644, mtime_ns=MTIME,
                     expected_hash=xxhash.xxh3_128(data).digest(), offset=offset)


def _chunks(data: bytes, step: int, lo: int = 0, codec: Any = None) -> list[AnyMessage]:
    out: list[AnyMessage] = []
    for o in range(lo, len(data), step):
        codec_id, payload = encode_chunk(data[o:o + step], codec) if codec else (0, data[o:o + step])
        out.append(FileChunk(seq=SEQ, offset=o, data=payload, codec=codec_id))
    return out


def _spooled(data: bytes, step: int = CHUNK_BYTES, codec: Any = None) -> list[AnyMessage]:
    return [_start(data), *_chunks(data, step, codec=codec), FileEnd(seq=SEQ, hash=xxhash.xxh3_128(data).digest()),
            Checkpoint(seq=SEQ)]


def _child_holding(folder: TargetFolder, data: bytes, held: int) -> None:
    """The child received the first `held` bytes, then its link (or its process) died."""
    session = ReceiverSession(folder, "j", lambda *_: None)
    assert session.apply_batch([_start(data), *_chunks(data, CHUNK_BYTES)[: held // CHUNK_BYTES]]) == []
    session.close()


def _relay_to(folder: TargetFolder, *reads: list[AnyMessage], codec: Any = None) -> tuple[list[AnyMessage], int]:
    """What the relay's link sends the child for these spool reads, after the child listed its
    partials as it does in MappingState; and how many pings went while nothing else could."""
    link: Any = object.__new__(RelayLink)
    link.options = ops.SendOptions(codec=codec or ops.SendOptions().codec)
    link.options.resume = {(p.path, p.hash): p.size for p in folder.list_partials()}
    sent: list[AnyMessage] = []

    async def no_window(session: object) -> None:
        return None

    async def send_stream(session: object, messages: Any) -> None:
        sent.extend(m for m in messages if not isinstance(m, ops.Flush))

    link._wait_window, link._send_stream = no_window, send_stream
    session = _Session()

    async def forward_all() -> None:
        refused, cut = RefusedDelta(), ResumeCut()
        for messages in reads:
            await link._forward(session, messages, refused, cut)

    anyio.run(forward_all)
    return sent, session.framed.pings


def _resent_bytes(sent: list[AnyMessage]) -> int:
    return sum(len(decode_chunk(m.codec, m.data)) for m in sent if isinstance(m, FileChunk))


def _commit(folder: TargetFolder, sent: list[AnyMessage]) -> bytes:
    replies = ReceiverSession(folder, "j", lambda *_: None).apply_batch(sent)
    assert replies == [Ack(mapping_id=folder.mapping_id, watermark=SEQ)], replies
    return (folder.root / "big.bin").read_bytes()


@pytest.mark.parametrize("split", ["one read", "a read per message"])
@pytest.mark.parametrize(("step", "codec"), [
    pytest.param(CHUNK_BYTES, None, id="whole chunks"),
    pytest.param(640 * KIB, None, id="a chunk straddles what the child holds"),
    pytest.param(256 * KIB, None, id="chunks of a bandwidth limit"),
    pytest.param(640 * KIB, Zstd(3), id="zstd chunks: encoded sizes say nothing"),
])
def test_a_child_holding_part_of_a_file_gets_only_what_it_lacks(
        folder: TargetFolder, step: int, codec: Any, split: str) -> None:
    data = _data()
    held = 3 * CHUNK_BYTES
    _child_holding(folder, data, held)
    spooled = _spooled(data, step, codec)
    reads = [spooled] if split == "one read" else [[m] for m in spooled]
    sent, _ = _relay_to(folder, *reads)
    starts = [m for m in sent if isinstance(m, FileStart)]
    assert len(starts) == 1 and 0 < starts[0].offset <= held
    assert _resent_bytes(sent) <= SIZE - held + CHUNK_BYTES
    assert _commit(folder, sent) == data


def test_the_child_gets_the_chunks_in_its_hops_codec_from_where_it_resumes(folder: TargetFolder) -> None:
    data = b"compressible " * (SIZE // 13) + b"x" * (SIZE % 13)
    _child_holding(folder, data, 4 * CHUNK_BYTES)
    sent, _ = _relay_to(folder, _spooled(data), codec=codec_for_level(3))
    chunks = [m for m in sent if isinstance(m, FileChunk)]
    assert chunks[0].offset == 4 * CHUNK_BYTES and all(m.codec == Zstd.ID for m in chunks)
    assert _commit(folder, sent) == data


def test_a_child_holding_every_byte_gets_no_chunk(folder: TargetFolder) -> None:
    data = _data()
    _child_holding(folder, data, SIZE)
    sent, _ = _relay_to(folder, _spooled(data, 640 * KIB))
    assert [type(m).__name__ for m in sent] == ["FileStart", "FileEnd", "Checkpoint"]
    assert _commit(folder, sent) == data


def test_while_the_held_part_is_dropped_the_child_is_pinged(folder: TargetFolder) -> None:
    """Our parent may be slow to bring the part the child holds: the child must not time us out."""
    data = _data()
    _child_holding(folder, data, 6 * CHUNK_BYTES)
    spooled = _spooled(data)
    sent, pings = _relay_to(folder, *[[m] for m in spooled])
    assert pings >= 5 and _commit(folder, sent) == data


def test_a_version_given_up_mid_cut_reaches_the_child_as_given_up(folder: TargetFolder) -> None:
    data = _data()
    _child_holding(folder, data, 3 * CHUNK_BYTES)
    spooled = [_start(data), *_chunks(data, CHUNK_BYTES)[:2], FileAbort(seq=SEQ, reason="changed while read"),
               Checkpoint(seq=SEQ)]
    sent, _ = _relay_to(folder, spooled)
    assert [type(m).__name__ for m in sent] == ["FileAbort", "Checkpoint"]


def test_a_child_holding_another_version_in_part_gets_this_one_all(folder: TargetFolder) -> None:
    data = _data()
    _child_holding(folder, os.urandom(SIZE), 3 * CHUNK_BYTES)
    spooled = _spooled(data)
    sent, _ = _relay_to(folder, spooled)
    assert sent[0] == spooled[0] and _resent_bytes(sent) == SIZE
    assert _commit(folder, sent) == data


def test_a_version_whose_partial_the_child_found_bad_goes_all_again(folder: TargetFolder) -> None:
    """The child answered HASH_MISMATCH (its partial was not what it was named for): whatever it
    lists next time, that version goes from its first byte."""
    data = _data()
    _child_holding(folder, data, 3 * CHUNK_BYTES)
    link: Any = object.__new__(RelayLink)
    link.options = ops.SendOptions(resume={(p.path, p.hash): p.size for p in folder.list_partials()})
    link.options.whole_file_seqs.add(SEQ)
    assert link._start_file(_start(data), [], ResumeCut()) == [_start(data)]
