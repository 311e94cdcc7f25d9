"""A relay's forwarding of a delta its child refused (RelayLink._forward): the version reaches the
child whole, once, and the batch's Checkpoint always follows it. What is forwarded follows the
child: its Hello (small files) and its hop's codec. Acks come back from the child for itself and
the targets below it only."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest

from relaysync.protocol.messages import (
    AnyMessage,
    Checkpoint,
    DeltaStart,
    FileAbort,
    FileChunk,
    FileEnd,
    FileStart,
    NodeMark,
    RouteHop,
    SmallFile,
)
from relaysync.transfer import ops
from relaysync.transfer._link_session import _Session as LinkSession
from relaysync.transfer._record_stream import BATCH_BYTES
from relaysync.transfer.codec import Zstd, codec_for_level, decode_chunk
from relaysync.transfer.relay import RefusedDelta, RelayFeed, RelayLink
from relaysync.transfer.relay_resume import ResumeCut
from relaysync.transfer.spool import Spool
from relaysync.transfer.target_folder import TargetFolder
from relaysync.watch.manifest import Manifest

H = b"h" * 16
REFUSED = 5


class _Session:
    sent_upto = REFUSED - 1


def _forward(*reads: list[AnyMessage]) -> list[str]:
    """What the child gets from these spool reads, forwarded one by one as RelayLink._stream does:
    message type names, and "tree:<seq>" where a version goes from our tree."""
    link: Any = object.__new__(RelayLink)  # only _forward's collaborators are needed
    link.options = ops.SendOptions()
    link.options.whole_file_seqs.add(REFUSED)
    got: list[str] = []

    async def send(session: object, out: list[AnyMessage]) -> None:
        got.extend(type(m).__name__ for m in out)

    async def whole_from_tree(
        session: object, seq: int, path: str, changed_at: float = 0.0
    ) -> None:
        got.append(f"tree:{seq}")

    link._send, link._whole_from_tree = send, whole_from_tree

    async def forward_all() -> None:
        session, refused, cut = _Session(), RefusedDelta(), ResumeCut()
        for messages in reads:
            await link._forward(session, messages, refused, cut)

    anyio.run(forward_all)
    return got


DELTA = [
    DeltaStart(seq=REFUSED, path="f", size=10, mode=0o644, mtime_ns=1, base_hash=H),
    FileChunk(seq=REFUSED, offset=0, data=b"d"),
]
ABORT = FileAbort(seq=REFUSED, reason="delta failed")


@pytest.mark.parametrize(
    ("tail", "child_gets"),
    [
        pytest.param(
            [FileEnd(seq=REFUSED, hash=H)],
            ["tree:5", "Checkpoint"],
            id="delta-ended: whole from our tree",
        ),
        pytest.param(
            [
                ABORT,
                SmallFile(seq=REFUSED, path="f", size=1, mode=0o644, mtime_ns=1, data=b"x", hash=H),
            ],
            ["SmallFile", "Checkpoint"],
            id="source fell back to a small file",
        ),
        pytest.param(
            [
                ABORT,
                FileStart(seq=REFUSED, path="f", size=1, mode=0o644, mtime_ns=1),
                FileChunk(seq=REFUSED, offset=0, data=b"x"),
                FileEnd(seq=REFUSED, hash=H),
            ],
            ["FileStart", "FileChunk", "FileEnd", "Checkpoint"],
            id="source fell back to a whole file",
        ),
        pytest.param([ABORT], ["Checkpoint"], id="changed while read: a later record carries it"),
        pytest.param(
            [],
            ["tree:5", "Checkpoint"],
            id="cut short: the checkpoint still goes, after the version",
        ),
    ],
)
def test_a_refused_delta_reaches_the_child_whole_and_the_checkpoint_follows(
    tail: list[AnyMessage], child_gets: list[str]
) -> None:
    assert _forward([*DELTA, *tail, Checkpoint(seq=REFUSED)]) == child_gets


def test_the_next_file_in_the_batch_is_forwarded_after_the_refused_one() -> None:
    after = SmallFile(seq=REFUSED + 1, path="b", size=1, mode=0o644, mtime_ns=1, data=b"b", hash=H)
    got = _forward([*DELTA, FileEnd(seq=REFUSED, hash=H), after, Checkpoint(seq=REFUSED + 1)])
    assert got == ["tree:5", "SmallFile", "Checkpoint"]


@pytest.mark.parametrize("split", range(1, 5))
@pytest.mark.parametrize(
    ("tail", "child_gets"),
    [
        pytest.param(
            [FileChunk(seq=REFUSED, offset=1, data=b"e"), FileEnd(seq=REFUSED, hash=H)],
            ["tree:5", "Checkpoint"],
            id="delta-ended",
        ),
        pytest.param(
            [
                FileChunk(seq=REFUSED, offset=1, data=b"e"),
                ABORT,
                SmallFile(seq=REFUSED, path="f", size=1, mode=0o644, mtime_ns=1, data=b"x", hash=H),
            ],
            ["SmallFile", "Checkpoint"],
            id="fell back to a small file",
        ),
    ],
)
def test_a_refused_delta_split_over_spool_reads_is_still_dropped_whole(
    split: int, tail: list[AnyMessage], child_gets: list[str]
) -> None:
    """A relay reads its spool BATCH_BYTES at a time: a large delta's messages span reads. The
    drop goes on in the next read; none of its chunks reach the child without their start."""
    messages = [*DELTA, *tail, Checkpoint(seq=REFUSED)]
    assert _forward(messages[:split], messages[split:]) == child_gets


def test_a_refused_delta_larger_than_one_spool_read(tmp_path: Path) -> None:
    """Over a real spool: a 10 MiB delta comes back in two reads; the child gets it from our tree."""
    spool = Spool(tmp_path / "spool")
    spool.begin("journal", REFUSED - 1)
    mib = 1024 * 1024
    spool.append(
        [
            DeltaStart(seq=REFUSED, path="big", size=10 * mib, mode=0o644, mtime_ns=1, base_hash=H),
            *(FileChunk(seq=REFUSED, offset=i * mib, data=bytes(mib)) for i in range(10)),
            FileEnd(seq=REFUSED, hash=H),
            Checkpoint(seq=REFUSED),
        ]
    )
    reads, position = [], spool.start
    while True:
        messages, position = spool.read(position, spool.generation, BATCH_BYTES)
        if not messages:
            break
        reads.append(messages)
    assert len(reads) > 1
    assert _forward(*reads) == ["tree:5", "Checkpoint"]


def _sending_link(small_files: bool) -> tuple[Any, list[AnyMessage]]:
    """A RelayLink whose child's Hello did (or did not) offer small_file; what it sends is kept."""
    link: Any = object.__new__(RelayLink)
    link.options = ops.SendOptions(small_files=small_files)
    sent: list[AnyMessage] = []

    async def no_window(session: object) -> None:
        return None

    async def send_stream(session: object, messages: Any) -> None:
        sent.extend(m for m in messages if not isinstance(m, ops.Flush))

    link._wait_window, link._send_stream = no_window, send_stream
    return link, sent


def test_a_child_of_an_older_release_gets_small_files_streamed() -> None:
    """The parent sent SmallFile (the relay takes it); the child's Hello did not offer it."""
    link, sent = _sending_link(small_files=False)
    small = SmallFile(
        seq=REFUSED + 1,
        path="b",
        size=3,
        mode=0o640,
        mtime_ns=7,
        data=b"abc",
        hash=H,
        base_hash=b"b" * 16,
        changed_at=1.5,
        codec=0,
    )
    session = _Session()
    anyio.run(link._send, session, [small, Checkpoint(seq=REFUSED + 1)])
    assert sent == [
        FileStart(
            seq=REFUSED + 1,
            path="b",
            size=3,
            mode=0o640,
            mtime_ns=7,
            base_hash=b"b" * 16,
            changed_at=1.5,
        ),
        FileChunk(seq=REFUSED + 1, offset=0, data=b"abc", codec=0),
        FileEnd(seq=REFUSED + 1, hash=H),
        Checkpoint(seq=REFUSED + 1),
    ]
    assert session.sent_upto == REFUSED + 1


def test_a_child_of_this_release_gets_small_files_as_they_came() -> None:
    link, sent = _sending_link(small_files=True)
    small = SmallFile(seq=REFUSED + 1, path="b", size=1, mode=0o644, mtime_ns=1, data=b"b", hash=H)
    anyio.run(link._send, _Session(), [small, Checkpoint(seq=REFUSED + 1)])
    assert sent == [small, Checkpoint(seq=REFUSED + 1)]


@pytest.mark.parametrize("small_files", [True, False], ids=["this release", "older release"])
def test_a_version_sent_from_the_relays_tree_follows_the_childs_hello(
    tmp_path: Path, small_files: bool
) -> None:
    (tmp_path / "f").write_bytes(b"data")
    link, sent = _sending_link(small_files)

    class Feed:
        committed = REFUSED
        root = tmp_path
        manifest = Manifest(tmp_path / "m.db")

    link.source, link.target, link.log = (
        Feed(),
        type("T", (), {"name": "child"})(),
        logging.getLogger("test"),
    )
    anyio.run(link._whole_from_tree, _Session(), REFUSED, "f")
    kinds = [type(m).__name__ for m in sent]
    assert kinds == (["SmallFile"] if small_files else ["FileStart", "FileChunk", "FileEnd"])


def test_a_rename_whose_source_the_child_lacked_goes_as_the_renamed_file_from_our_tree() -> None:
    """The child answered BASE_MISMATCH to a Rename (it never got the file: an atomic save's temp
    file was gone when the source read it; or it holds another version there): the relay sends
    the new path's version whole, after a Delete of the old name."""
    from relaysync.protocol.messages import Rename

    rename = Rename(seq=REFUSED, path="index.html.tmp", new_path="index.html", hash=H)
    assert _forward([rename, Checkpoint(seq=REFUSED)]) == ["Delete", "tree:5", "Checkpoint"]


TEXT = b"relaysync compresses repetitive text like this line, over and over again.\n" * 800


@pytest.mark.parametrize("small_files", [True, False], ids=["this release", "older release"])
def test_the_child_gets_file_data_in_its_hops_codec(small_files: bool) -> None:
    """Our parent's hop was plain, the child's is zstd: every chunk and small file is compressed
    on the way out, whatever else goes as it came."""
    link, sent = _sending_link(small_files)
    link.options.codec = codec_for_level(3)
    small = SmallFile(
        seq=REFUSED + 1, path="s", size=len(TEXT), mode=0o644, mtime_ns=1, data=TEXT, hash=H
    )
    start = FileStart(seq=REFUSED + 2, path="b", size=2 * len(TEXT), mode=0o644, mtime_ns=1)
    spooled = [
        small,
        start,
        FileChunk(seq=REFUSED + 2, offset=0, data=TEXT),
        FileChunk(seq=REFUSED + 2, offset=len(TEXT), data=TEXT),
        FileEnd(seq=REFUSED + 2, hash=H),
        Checkpoint(seq=REFUSED + 2),
    ]
    anyio.run(link._send, _Session(), spooled)
    data = [m for m in sent if isinstance(m, FileChunk | SmallFile)]
    assert len(data) == 3 and all(
        m.codec == Zstd.ID and decode_chunk(m.codec, m.data) == TEXT for m in data
    )
    assert [m.offset for m in data if isinstance(m, FileChunk)][-2:] == [0, len(TEXT)]
    assert [m for m in sent if not isinstance(m, FileChunk | SmallFile)][-3:] == spooled[
        1:2
    ] + spooled[4:]


def test_a_child_on_the_same_codec_gets_the_spooled_messages_themselves() -> None:
    link, sent = _sending_link(small_files=True)
    link.options.codec = codec_for_level(3)
    packed = Zstd(3).compress(TEXT)
    spooled = [
        SmallFile(
            seq=REFUSED + 1,
            path="s",
            size=len(TEXT),
            mode=0o644,
            mtime_ns=1,
            data=packed,
            hash=H,
            codec=Zstd.ID,
        ),
        Checkpoint(seq=REFUSED + 1),
    ]
    anyio.run(link._send, _Session(), spooled)
    assert len(sent) == 2 and all(a is b for a, b in zip(sent, spooled, strict=True))


def test_a_child_acks_for_the_targets_below_it_only(tmp_path: Path) -> None:
    """r relays to c1 and c2, c1 to g1: c1 may report g1, never its sibling c2 (a mark for c2 would
    let the spool and the source's journal go before c2 has them), and marks never go back."""
    (tmp_path / "root").mkdir()
    folder = TargetFolder(
        mapping_id=1,
        source_node="s",
        root=tmp_path / "root",
        manifest=Manifest(tmp_path / "m.db"),
        durable=False,
    )

    async def main() -> dict[str, int]:
        feed = RelayFeed(folder, Spool(tmp_path / "spool"))
        feed.children = frozenset({"c1", "c2"})
        feed.routes = (
            RouteHop(parent="s", child="r"),
            RouteHop(parent="r", child="c1"),
            RouteHop(parent="r", child="c2"),
            RouteHop(parent="c1", child="g1"),
        )
        c1 = LinkSession(
            SimpleNamespace(
                source=feed,
                target=SimpleNamespace(node_id="c1"),
                failures=0,
                options=ops.SendOptions(),
            ),
            framed=None,
        )  # type: ignore[arg-type]
        c1._on_ack(10, [NodeMark(node_id="c2", watermark=99), NodeMark(node_id="g1", watermark=7)])
        c1._on_ack(10, [NodeMark(node_id="g1", watermark=3)])  # an older report, late
        return feed.marks

    assert anyio.run(main) == {"c1": 10, "g1": 7}


class _GrowingFeed:
    """A relay whose parent sends seq 5 in `steps` appends, `step_s` apart, then (if `commits`) it
    commits it."""

    def __init__(self, steps: int, step_s: float, commits: bool) -> None:
        self.committed = REFUSED - 1
        self.spool = type("S", (), {"end": 0})()
        self.steps, self.step_s, self.commits = steps, step_s, commits

    async def wait_for_records(self, after_seq: int, timeout_s: float) -> None:
        await anyio.sleep(min(timeout_s, self.step_s))
        if self.steps:
            self.steps -= 1
            self.spool.end += 1
        elif self.commits:
            self.committed = REFUSED


class _PingedSession:
    sent_upto = REFUSED - 1

    def __init__(self) -> None:
        self.pings = 0
        self.framed = self

    async def send(self, message: AnyMessage) -> None:
        self.pings += 1


@pytest.mark.parametrize(
    ("steps", "step_s", "gives_up"),
    [
        pytest.param(
            12, 0.05, False, id="a parent still sending after the timeout: waited for, child pinged"
        ),
        pytest.param(0, 0.05, True, id="a parent silent for the timeout: given up"),
    ],
)
def test_a_relay_waits_for_its_own_copy_as_long_as_its_parent_sends(
    monkeypatch: pytest.MonkeyPatch, steps: int, step_s: float, gives_up: bool
) -> None:
    """Before it sends a version from its tree (or decides how a child resumes it), a relay waits
    to have committed it: a large file on a slow hop may take longer than RECEIVE_TIMEOUT_S."""
    from relaysync.transfer import relay

    monkeypatch.setattr(relay, "RECEIVE_TIMEOUT_S", 0.3)
    monkeypatch.setattr(relay, "WAIT_RELAY_S", 0.05)
    link: Any = object.__new__(RelayLink)
    link.source = _GrowingFeed(steps, step_s, commits=not gives_up)
    session = _PingedSession()
    if gives_up:
        with pytest.raises(TimeoutError):
            anyio.run(link._wait_committed, session, REFUSED)
    else:
        anyio.run(link._wait_committed, session, REFUSED)
        assert link.source.committed == REFUSED and session.pings >= steps
