"""A relay's hop to its child runs that hop's bandwidth limit: what the relay forwards from its
spool (chunks of its parent's hop, 1 MiB when that one is unlimited) and what it resends whole
from its tree go in messages of this hop's size, paced by its bucket, and a child holding part of
a file still resumes from a chunk's start and commits exactly the source's bytes."""

from __future__ import annotations

import os
from pathlib import Path

import anyio
import pytest
import xxhash

from relaysync.constants import CHUNK_BYTES
from relaysync.protocol.messages import Ack, AnyMessage, Checkpoint, FileChunk, FileEnd, FileStart
from relaysync.transfer import ops
from relaysync.transfer.bandwidth import BURST_S, TokenBucket, mbit_to_bytes
from relaysync.transfer.codec import Codec, Plain, Zstd, encode_chunk
from relaysync.transfer.receiver import ReceiverSession
from relaysync.transfer.relay import RefusedDelta, RelayLink
from relaysync.transfer.relay_resume import ResumeCut
from relaysync.transfer.target_folder import TargetFolder
from tests.unit.transfer._pacing import (
    FakeClock,
    FakeFramed,
    make_link,
    most_in_any_second,
    session,
)

LIMIT = mbit_to_bytes(1)  # 125 kB/s on the relay -> child hop: messages of 16 KiB
PIECE = 16 * 1024
SEQ = 5


def _relay(tmp_path: Path, codec: Codec | None = None) -> tuple[RelayLink, FakeFramed]:
    clock = FakeClock()
    options = ops.SendOptions(
        bandwidth=TokenBucket(LIMIT, clock=clock, sleep=clock.sleep), codec=codec or Plain()
    )
    link: RelayLink = make_link(options, tmp_path, RelayLink)
    return link, FakeFramed(clock)


def _compressible(size: int) -> bytes:
    """Random bytes of 6 bits: zstd makes them 3/4 as large, still more than a piece a chunk."""
    return os.urandom(size).translate(bytes(i & 0x3F for i in range(256)))


def _spooled(data: bytes, codec: Codec | None = None) -> list[AnyMessage]:
    """A version as the relay's parent sent it, unlimited: 1 MiB chunks, maybe in zstd."""
    chunks = []
    for o in range(0, len(data), CHUNK_BYTES):
        codec_id, payload = (
            encode_chunk(data[o : o + CHUNK_BYTES], codec)
            if codec
            else (0, data[o : o + CHUNK_BYTES])
        )
        chunks.append(FileChunk(seq=SEQ, offset=o, data=payload, codec=codec_id))
    return [
        FileStart(
            seq=SEQ,
            path="big.bin",
            size=len(data),
            mode=0o644,
            mtime_ns=1,
            expected_hash=xxhash.xxh3_128_digest(data),
        ),
        *chunks,
        FileEnd(seq=SEQ, hash=xxhash.xxh3_128_digest(data)),
        Checkpoint(seq=SEQ),
    ]


def test_a_version_resent_whole_from_the_relays_tree_keeps_the_hops_limit(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(os.urandom(4 * CHUNK_BYTES))
    link, framed = _relay(tmp_path)
    anyio.run(link._whole_from_tree, session(link, framed), 7, "f")
    assert max(len(m.data) for _, _, m in framed.sent if isinstance(m, FileChunk)) == PIECE
    assert most_in_any_second(framed.sent) <= LIMIT * (1 + BURST_S)


@pytest.mark.parametrize(
    ("parent", "hop"),
    [(None, None), (Zstd(1), Zstd(3)), (Zstd(1), None), (None, Zstd(3))],
    ids=["plain", "zstd both hops", "zstd then plain", "plain then zstd"],
)
def test_forwarded_chunks_keep_the_hops_limit(
    tmp_path: Path, parent: Codec | None, hop: Codec | None
) -> None:
    """Before: each 1 MiB spooled chunk went at once, 8 s worth of the hop's limit."""
    data = _compressible(4 * CHUNK_BYTES)
    link, framed = _relay(tmp_path, hop)
    anyio.run(
        link._forward, session(link, framed), _spooled(data, parent), RefusedDelta(), ResumeCut()
    )
    chunks = [m for _, _, m in framed.sent if isinstance(m, FileChunk)]
    assert all(len(c.data) <= PIECE for c in chunks)
    assert {c.codec for c in chunks} == {(hop or Plain()).ID}
    assert most_in_any_second(framed.sent) <= LIMIT * (1 + BURST_S)


@pytest.mark.parametrize("held", [3 * CHUNK_BYTES, 4 * CHUNK_BYTES])
@pytest.mark.parametrize("parent", [None, Zstd(1)], ids=["plain", "zstd"])
def test_a_child_holding_part_of_a_file_resumes_and_commits_through_a_slower_hop(
    tmp_path: Path, folder: TargetFolder, held: int, parent: Codec | None
) -> None:
    """The cut to what the child lacks works on the spool's chunks, the pieces follow it: the
    child resumes at a chunk's start at or below what it holds and commits the source's bytes."""
    data = _compressible(10 * CHUNK_BYTES)  # over RESUME_MIN_BYTES: the child keeps a named partial
    spooled = _spooled(data, parent)
    child = ReceiverSession(folder, "j", lambda *_: None)
    assert child.apply_batch(spooled[: 1 + held // CHUNK_BYTES]) == []  # then its link died
    child.close()
    (tmp_path / "relay").mkdir()
    link, framed = _relay(tmp_path / "relay")
    link.options.resume = {(p.path, p.hash): p.size for p in folder.list_partials()}
    anyio.run(link._forward, session(link, framed), spooled, RefusedDelta(), ResumeCut())
    sent = [m for _, _, m in framed.sent]
    start = next(m for m in sent if isinstance(m, FileStart))
    assert 0 < start.offset <= held and start.offset % PIECE == 0
    assert all(len(m.data) <= PIECE for m in sent if isinstance(m, FileChunk))
    replies = ReceiverSession(folder, "j", lambda *_: None).apply_batch(sent)
    assert replies == [Ack(mapping_id=folder.mapping_id, watermark=SEQ)], replies
    assert (folder.root / "big.bin").read_bytes() == data
