"""Resume through a relay (RelayLink._forward with transfer/relay_resume.py): a child that holds
part of a large file gets only what it lacks from the spool, at most one chunk again, whatever
the chunk sizes and codecs, and still commits exactly the source's bytes. Where the relay's
parent resumed the relay itself, a child holding less gets the rest from the relay's copy; a
copy that is not that version ends in a whole resend, never in a corrupt commit."""

from __future__ import annotations

import logging
import os
import threading
from pathlib import Path
from typing import Any

import anyio
import pytest
import xxhash

from relaysync.constants import CHUNK_BYTES
from relaysync.protocol.messages import (
    Ack,
    AnyMessage,
    Checkpoint,
    DeltaStart,
    Error,
    ErrorCode,
    FileAbort,
    FileChunk,
    FileEnd,
    FileStart,
    Partial,
    Ping,
)
from relaysync.transfer import ops
from relaysync.transfer.codec import Zstd, codec_for_level, decode_chunk, encode_chunk
from relaysync.transfer.receiver import ReceiverSession
from relaysync.transfer.relay import RefusedDelta, RelayFeed, RelayLink
from relaysync.transfer.relay_resume import ResumeCut
from relaysync.transfer.spool import Spool
from relaysync.transfer.target_folder import TargetFolder
from relaysync.watch.manifest import Entry, Manifest

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
    return FileStart(
        seq=SEQ,
        path="big.bin",
        size=len(data),
        mode=0o644,
        mtime_ns=MTIME,
        expected_hash=xxhash.xxh3_128(data).digest(),
        offset=offset,
    )


def _chunks(data: bytes, step: int, lo: int = 0, codec: Any = None) -> list[AnyMessage]:
    out: list[AnyMessage] = []
    for o in range(lo, len(data), step):
        codec_id, payload = (
            encode_chunk(data[o : o + step], codec) if codec else (0, data[o : o + step])
        )
        out.append(FileChunk(seq=SEQ, offset=o, data=payload, codec=codec_id))
    return out


def _spooled(data: bytes, step: int = CHUNK_BYTES, codec: Any = None) -> list[AnyMessage]:
    return [
        _start(data),
        *_chunks(data, step, codec=codec),
        FileEnd(seq=SEQ, hash=xxhash.xxh3_128(data).digest()),
        Checkpoint(seq=SEQ),
    ]


def _child_holding(folder: TargetFolder, data: bytes, held: int) -> None:
    """The child received the first `held` bytes, then its link (or its process) died."""
    session = ReceiverSession(folder, "j", lambda *_: None)
    assert (
        session.apply_batch([_start(data), *_chunks(data, CHUNK_BYTES)[: held // CHUNK_BYTES]])
        == []
    )
    session.close()


def _relay_to(
    folder: TargetFolder,
    *reads: list[AnyMessage],
    codec: Any = None,
    relay: TargetFolder | None = None,
    whole: set[int] = frozenset(),
) -> tuple[list[AnyMessage], int]:
    """What the relay's link sends the child for these spool reads, after the child listed its
    partials as it does in MappingState; and how many pings went while nothing else could.
    "tree:<seq>" stands where a version goes whole from the relay's tree."""
    link: Any = object.__new__(RelayLink)
    link.options = ops.SendOptions(
        codec=codec or ops.SendOptions().codec, whole_file_seqs=set(whole)
    )
    link.options.resume = {(p.path, p.hash): p.size for p in folder.list_partials()}
    link.source = type("Feed", (), {"folder": relay, "committed": SEQ})()  # the relay holds SEQ
    link.target, link.log = type("T", (), {"name": "child"})(), logging.getLogger("test")
    sent: list[Any] = []

    async def whole_from_tree(
        session: object, seq: int, path: str, changed_at: float = 0.0
    ) -> None:
        sent.append(f"tree:{seq}")

    async def no_window(session: object) -> None:
        return None

    async def send_stream(session: object, messages: Any) -> None:
        sent.extend(m for m in messages if not isinstance(m, ops.Flush))

    link._wait_window, link._send_stream, link._whole_from_tree = (
        no_window,
        send_stream,
        whole_from_tree,
    )
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
    assert all(not isinstance(m, str) for m in sent), sent
    replies = ReceiverSession(folder, "j", lambda *_: None).apply_batch(sent)
    assert replies == [Ack(mapping_id=folder.mapping_id, watermark=SEQ)], replies
    return (folder.root / "big.bin").read_bytes()


@pytest.mark.parametrize("split", ["one read", "a read per message"])
@pytest.mark.parametrize(
    ("step", "codec"),
    [
        pytest.param(CHUNK_BYTES, None, id="whole chunks"),
        pytest.param(640 * KIB, None, id="a chunk straddles what the child holds"),
        pytest.param(256 * KIB, None, id="chunks of a bandwidth limit"),
        pytest.param(640 * KIB, Zstd(3), id="zstd chunks: encoded sizes say nothing"),
    ],
)
def test_a_child_holding_part_of_a_file_gets_only_what_it_lacks(
    folder: TargetFolder, step: int, codec: Any, split: str
) -> None:
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


def test_the_child_gets_the_chunks_in_its_hops_codec_from_where_it_resumes(
    folder: TargetFolder,
) -> None:
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
    spooled = [
        _start(data),
        *_chunks(data, CHUNK_BYTES)[:2],
        FileAbort(seq=SEQ, reason="changed while read"),
        Checkpoint(seq=SEQ),
    ]
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
    spooled = _spooled(data)
    sent, _ = _relay_to(folder, spooled, whole={SEQ})
    assert sent[0] == spooled[0] and _resent_bytes(sent) == SIZE


K = 5 * CHUNK_BYTES  # where the relay's parent resumed the relay


@pytest.fixture
def relay(tmp_path: Path) -> TargetFolder:
    """The relay's own target folder (mapping 1, like the child's)."""
    root = tmp_path / "relay"
    root.mkdir()
    return TargetFolder(
        mapping_id=1,
        source_node="src",
        root=root,
        manifest=Manifest(tmp_path / "relay.db"),
        durable=False,
    )


def _resumed_relay(relay: TargetFolder, data: bytes) -> list[AnyMessage]:
    """The relay held K bytes of `data` and its parent resumed it there: what its spool holds."""
    _child_holding(relay, data, K)
    assert relay.list_partials()[0].size == K
    return [
        _start(data, offset=K),
        *_chunks(data, CHUNK_BYTES, lo=K),
        FileEnd(seq=SEQ, hash=xxhash.xxh3_128(data).digest()),
        Checkpoint(seq=SEQ),
    ]


@pytest.mark.parametrize("child_held", [0, 2 * CHUNK_BYTES, K, 7 * CHUNK_BYTES])
@pytest.mark.parametrize("relay_state", ["receiving", "committed"])
def test_a_child_of_a_resumed_relay_gets_what_it_lacks_from_the_relays_copy(
    folder: TargetFolder, relay: TargetFolder, child_held: int, relay_state: str
) -> None:
    data = _data()
    spooled = _resumed_relay(relay, data)
    if (
        relay_state == "committed"
    ):  # the relay's session applied the rest before the child's link read it
        replies = ReceiverSession(relay, "j", lambda *_: None).apply_batch(spooled)
        assert replies == [Ack(mapping_id=1, watermark=SEQ)] and not relay.list_partials()
    if child_held:
        _child_holding(folder, data, child_held)
    sent, _ = _relay_to(folder, spooled, relay=relay)
    assert [m.offset for m in sent if isinstance(m, FileStart)] == [child_held]
    assert _resent_bytes(sent) <= SIZE - child_held + CHUNK_BYTES
    assert _commit(folder, sent) == data


def test_a_relay_copy_that_is_not_that_version_ends_in_a_whole_resend(
    folder: TargetFolder, relay: TargetFolder
) -> None:
    """The relay's copy was replaced (or was never right): the child's whole-file check refuses
    it, and when the link comes back the version goes whole from the relay's tree."""
    data = _data()
    spooled = _resumed_relay(relay, data)
    part = relay.root / next(p.name for p in relay.root.iterdir() if p.name.endswith(".part"))
    with open(part, "r+b") as f:
        f.write(b"not the source's bytes")
    sent, _ = _relay_to(folder, spooled, relay=relay)
    replies = ReceiverSession(folder, "j", lambda *_: None).apply_batch(sent)
    assert [type(r) for r in replies] == [Error] and replies[0].code == ErrorCode.HASH_MISMATCH  # type: ignore[attr-defined]
    assert not (folder.root / "big.bin").exists() and not folder.list_partials()
    sent, _ = _relay_to(
        folder, spooled, relay=relay, whole={SEQ}
    )  # the link's read loop noted the seq
    assert sent == [f"tree:{SEQ}", Checkpoint(seq=SEQ)]


def test_a_relay_holding_no_copy_sends_the_version_whole_from_its_tree(
    folder: TargetFolder, relay: TargetFolder
) -> None:
    data = _data()
    spooled = _resumed_relay(relay, data)
    relay.drop_partial("big.bin")  # a newer version started, say
    relay.manifest.put_many([Entry(path="big.bin", kind="f", size=1, hash=b"n" * 16)])
    sent, _ = _relay_to(folder, spooled, relay=relay)
    assert sent == [f"tree:{SEQ}", Checkpoint(seq=SEQ)]


def test_a_fifo_in_the_relays_tree_does_not_hang_the_childs_link(tmp_path: Path) -> None:
    data = os.urandom(10 * CHUNK_BYTES)
    digest = xxhash.xxh3_128(data).digest()
    relay_root, child_root = tmp_path / "relay", tmp_path / "child"
    relay_root.mkdir(), child_root.mkdir()
    relay = TargetFolder(
        mapping_id=1,
        source_node="src",
        root=relay_root,
        manifest=Manifest(tmp_path / "r.db"),
        durable=False,
    )
    child = TargetFolder(
        mapping_id=1,
        source_node="src",
        root=child_root,
        manifest=Manifest(tmp_path / "c.db"),
        durable=False,
    )
    # The relay committed this version (its manifest says so); then something local replaced the
    # file by a FIFO (the source side hardened its opens against exactly this: O_NONBLOCK).
    relay.manifest.put_many([Entry(path="big.bin", kind="f", size=len(data), hash=digest)])
    os.mkfifo(relay_root / "big.bin")
    spooled = [
        _start(data, offset=K),
        *_chunks(data, CHUNK_BYTES, lo=K),
        FileEnd(seq=SEQ, hash=digest),
        Checkpoint(seq=SEQ),
    ]
    result: list[object] = []
    t = threading.Thread(
        target=lambda: result.append(_relay_to(child, spooled, relay=relay)), daemon=True
    )
    t.start()
    t.join(5.0)
    stuck = t.is_alive()
    if stuck:  # release the thread: a writer on the FIFO lets its open return
        fd = os.open(relay_root / "big.bin", os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        t.join(5.0)
    assert not stuck, (
        "RelayLink._send_prefix blocked for ever in open_prefix on a FIFO in the relay's tree"
    )


def test_a_relay_names_obsolete_only_the_childs_partials_of_versions_it_neither_holds_nor_receives(
    tmp_path: Path, relay: TargetFolder
) -> None:
    """A child's partial of a version on its way to the relay (the relay holds a partial of its
    own there) stays, as does one of the version the relay committed; one of a version the
    relay has neither of goes; and nothing goes while the relay has a batch half spooled."""
    data = _data()
    _child_holding(relay, data, K)  # on its way to the relay too
    committed = b"\x05" * 16
    relay.manifest.put_many([Entry(path="done.bin", kind="f", size=1, hash=committed)])
    spool = Spool(tmp_path / "spool")
    spool.begin("j", 0)
    link: Any = object.__new__(RelayLink)
    link.source = RelayFeed(relay, spool)
    partials = [
        Partial(path="big.bin", hash=xxhash.xxh3_128(data).digest(), size=K),
        Partial(path="done.bin", hash=committed, size=K),
        Partial(path="done.bin.old", hash=b"\x06" * 16, size=K),
    ]
    assert [r.path for r in link._obsolete_partials(partials, 0)] == ["done.bin.old"]
    spool.append([_start(data)])  # a batch of our parent's, half spooled: its versions may be any
    assert link._obsolete_partials(partials, 0) == []


def _from_tree(folder: TargetFolder, relay: TargetFolder) -> list[AnyMessage]:
    """What the relay's link sends the child when version SEQ goes whole from the relay's tree
    (the child refused its delta, or the relay holds no copy below its resume offset), after the
    child listed its partials as it does in MappingState."""
    link: Any = object.__new__(RelayLink)
    link.options = ops.SendOptions(whole_file_seqs={SEQ})  # a refused delta: the seq is noted
    link.options.resume = {(p.path, p.hash): p.size for p in folder.list_partials()}
    link.source = type(
        "Feed",
        (),
        {"folder": relay, "root": relay.root, "manifest": relay.manifest, "committed": SEQ},
    )()
    link.target, link.log = type("T", (), {"name": "child"})(), logging.getLogger("test")
    sent: list[AnyMessage] = []

    async def send_stream(session: object, messages: Any) -> None:
        sent.extend(m for m in messages if not isinstance(m, ops.Flush))

    link._send_stream = send_stream
    anyio.run(link._whole_from_tree, _Session(), SEQ, "big.bin")
    return sent


def _committed_on(relay: TargetFolder, data: bytes) -> None:
    (relay.root / "big.bin").write_bytes(data)
    relay.manifest.put_many(
        [Entry(path="big.bin", kind="f", size=len(data), hash=xxhash.xxh3_128(data).digest())]
    )


def test_a_version_sent_whole_from_the_relays_tree_resumes_the_childs_partial(
    folder: TargetFolder, relay: TargetFolder
) -> None:
    """The relay's own fallback is resumable too: cut midway, the child keeps a partial of that
    version, and the next try sends only what it lacks (at most one chunk of what it held)."""
    data = _data()
    _committed_on(relay, data)
    first = _from_tree(folder, relay)
    assert isinstance(first[0], FileStart) and first[0].offset == 0
    session = ReceiverSession(folder, "j", lambda *_: None)
    assert session.apply_batch(first[:4]) == []  # FileStart and 3 chunks, then the link drops
    session.close()
    held = sum(p.size for p in folder.list_partials())
    assert held == 3 * CHUNK_BYTES, (
        "the child kept nothing to resume of a version sent from the relay's tree"
    )
    sent = _from_tree(folder, relay)
    assert isinstance(sent[0], FileStart) and sent[0].offset == held
    assert _resent_bytes(sent) <= SIZE - held
    assert _commit(folder, [*sent, Checkpoint(seq=SEQ)]) == data


def test_a_child_holding_another_version_gets_the_relays_tree_version_all(
    folder: TargetFolder, relay: TargetFolder
) -> None:
    data = _data()
    _child_holding(folder, os.urandom(SIZE), 3 * CHUNK_BYTES)
    _committed_on(relay, data)
    sent = _from_tree(folder, relay)
    assert isinstance(sent[0], FileStart) and sent[0].offset == 0 and _resent_bytes(sent) == SIZE
    assert _commit(folder, [*sent, Checkpoint(seq=SEQ)]) == data


def _spooled_delta(data: bytes, delta_bytes: int) -> list[AnyMessage]:
    """A delta to `data` as the relay spooled it: DeltaStart naming the new version, its chunks, FileEnd."""
    digest = xxhash.xxh3_128(data).digest()
    start = DeltaStart(
        seq=SEQ,
        path="big.bin",
        size=len(data),
        mode=0o644,
        mtime_ns=MTIME,
        base_hash=b"b" * 16,
        expected_hash=digest,
    )
    chunks = [
        FileChunk(seq=SEQ, offset=o, data=os.urandom(min(CHUNK_BYTES, delta_bytes - o)))
        for o in range(0, delta_bytes, CHUNK_BYTES)
    ]
    return [start, *chunks, FileEnd(seq=SEQ, hash=digest), Checkpoint(seq=SEQ)]


@pytest.mark.parametrize(
    ("relay_got", "child_gets"),
    [
        pytest.param(SIZE, "tree", id="a delta as large as the file: the rest whole"),
        pytest.param(
            SIZE - 3 * CHUNK_BYTES, "tree", id="a delta as large as the rest: the rest whole"
        ),
        pytest.param(None, "tree", id="the relay was sent that version whole: the rest whole"),
        pytest.param(
            CHUNK_BYTES // 2, "delta", id="a delta smaller than the rest: the delta again"
        ),
    ],
)
def test_a_child_holding_part_of_a_deltas_new_version_resumes_as_from_a_source(
    folder: TargetFolder, relay: TargetFolder, relay_got: int | None, child_gets: str
) -> None:
    """The child holds a prefix of the new version (its patched output of this delta, cut): the
    relay sends the rest whole from its tree, unless the delta it was sent was smaller than that
    rest, which is what the source decides for a child of its own (ops._resume_sends_less)."""
    data = _data()
    held = 3 * CHUNK_BYTES
    _child_holding(folder, data, held)
    spooled = _spooled_delta(data, relay_got or SIZE)
    if relay_got is not None:
        relay.note_delta("big.bin", xxhash.xxh3_128(data).digest(), relay_got)
    sent, _ = _relay_to(folder, spooled, relay=relay)
    if child_gets == "tree":
        assert sent == [
            f"tree:{SEQ}",
            Checkpoint(seq=SEQ),
        ]  # resumed at `held`: see the tests above
    else:
        assert sent == spooled


def test_a_child_holding_less_than_a_chunk_of_a_deltas_version_gets_the_delta(
    folder: TargetFolder, relay: TargetFolder
) -> None:
    data = _data()
    spooled = _spooled_delta(data, SIZE)
    relay.note_delta("big.bin", xxhash.xxh3_128(data).digest(), SIZE)
    sent, _ = _relay_to(folder, spooled, relay=relay)
    assert sent == spooled
