"""What a target does with messages from a peer that is buggy or hostile: nothing outside the
mapped root, no setuid programs, no unbounded memory or CPU from one message, and an op it
refuses is recorded, not retried for ever."""

from __future__ import annotations

import os
import resource
import socket
import stat
import struct
from pathlib import Path

import anyio
import msgspec
import pytest
import zstandard

from relaysync.constants import MAX_MESSAGE_BYTES, PREAUTH_MAX_MESSAGE_BYTES
from relaysync.errors import FrameTooLarge, ProtocolError
from relaysync.protocol.connection import wrap_accepted
from relaysync.protocol.framing import ENCODER, decode_payload
from relaysync.protocol.messages import (
    MAX_LISTING_ENTRIES,
    Ack,
    AnyMessage,
    Checkpoint,
    DeltaStart,
    DigestRequest,
    Error,
    ErrorCode,
    FileChunk,
    FileStart,
    MakeDir,
    Rename,
    SetAttr,
    SmallFile,
    Symlink,
)
from relaysync.transfer.conflicts import session_for
from relaysync.transfer.receiver import ReceiverSession
from relaysync.transfer.target_folder import TargetFolder
from relaysync.watch.filters import PathFilter
from relaysync.watch.manifest import Entry, Manifest
from relaysync.watch.scanner import scan_tree
from tests.unit.transfer._target_helpers import T0, nm_members
from tests.unit.transfer._target_helpers import small_file as _small


def test_setuid_setgid_and_sticky_never_land_on_a_target(folder: TargetFolder) -> None:
    session = ReceiverSession(folder, "j", lambda *_: None)
    replies = session.apply_batch(
        [
            _small(1, "sh", b"#!/bin/sh\nid\n", mode=0o6755),
            MakeDir(seq=2, path="d", mode=0o3777),
            _small(3, "t", b"x"),
            SetAttr(seq=4, path="t", mode=0o4777, mtime_ns=T0),
            Checkpoint(seq=4),
        ]
    )
    assert replies == [Ack(mapping_id=1, watermark=4)]
    modes = {p: stat.S_IMODE(os.lstat(folder.root / p).st_mode) for p in ("sh", "d", "t")}
    # o-w goes too (the default policy, test_target_policy.py); the manifest holds the mode asked
    assert modes == {"sh": 0o755, "d": 0o775, "t": 0o775}
    asked = {"sh": 0o755, "d": 0o777, "t": 0o777}
    assert {e.path: e.mode for e in folder.manifest.children("")} == asked


def test_a_source_does_not_send_the_special_bits(tmp_path: Path) -> None:
    (tmp_path / "prog").write_bytes(b"x")
    os.chmod(tmp_path / "prog", 0o4755)
    (change,) = scan_tree(
        tmp_path, Manifest(tmp_path.parent / "src.db"), PathFilter(), subdir="prog"
    )
    assert change.entry is not None and change.entry.mode == 0o755


def test_a_zstd_bomb_is_refused_before_it_is_inflated(folder: TargetFolder) -> None:
    bomb = zstandard.ZstdCompressor(level=19).compress(
        bytes(256 * 1024 * 1024)
    )  # ~8 KB on the wire
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    message = SmallFile(
        seq=1, path="f", size=10, mode=0o644, mtime_ns=T0, data=bomb, codec=3, hash=b"\0" * 16
    )
    message.validate()
    replies = ReceiverSession(folder, "j", lambda *_: None).apply_batch(
        [message, Checkpoint(seq=1)]
    )
    assert [type(r) for r in replies] == [Error] and replies[0].code == ErrorCode.BAD_MESSAGE
    assert (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024 < 64  # MiB


def test_a_zstd_frame_announcing_a_terabyte_is_a_bad_message_not_a_crash(
    folder: TargetFolder,
) -> None:
    frame = b"\x28\xb5\x2f\xfd" + bytes([0xC0, 0x00]) + struct.pack("<Q", 1 << 40) + b"\x01\x00\x00"
    replies = ReceiverSession(folder, "j", lambda *_: None).apply_batch(
        [
            FileStart(seq=1, path="f", size=5, mode=0o644, mtime_ns=T0),
            FileChunk(seq=1, offset=0, data=frame, codec=3),
        ]
    )
    assert [type(r) for r in replies] == [Error] and replies[0].code == ErrorCode.BAD_MESSAGE


def test_a_digest_request_costs_at_most_one_reply_of_listing(folder: TargetFolder) -> None:
    with pytest.raises(ProtocolError, match="twice"):
        DigestRequest(mapping_id=1, dirs=("",) * 20).validate()
    with pytest.raises(ProtocolError, match="directories"):
        DigestRequest(mapping_id=1, dirs=tuple(f"d{i}" for i in range(100_000))).validate()
    n = MAX_LISTING_ENTRIES + 10
    folder.manifest.put_many(
        [Entry(path="big", kind="d", mode=0o755), Entry(path="small", kind="d", mode=0o755)]
        + [
            Entry(path=f"big/f{i:06}", kind="f", size=1, mtime_ns=T0, mode=0o644, hash=b"\1" * 16)
            for i in range(n)
        ]
    )
    session = ReceiverSession(folder, "j", lambda *_: None)
    (reply,) = session.apply_batch([DigestRequest(mapping_id=1, dirs=("big", "small"))])
    big, small = reply.listings
    assert len(big.entries) == MAX_LISTING_ENTRIES and big.more
    assert small.entries == () and small.more  # not listed at all: asked for again on its own
    (reply,) = session.apply_batch(
        [DigestRequest(mapping_id=1, dirs=("big",), after=big.entries[-1].name)]
    )
    assert len(reply.listings[0].entries) == 10 and not reply.listings[0].more


TOO_LATE_NS = 2**63  # msgpack carries it (up to 2**64 - 1); SQLite INTEGER does not


@pytest.mark.parametrize(
    "message",
    [
        FileStart(seq=1, path="f", size=1, mode=0o644, mtime_ns=TOO_LATE_NS),
        DeltaStart(
            seq=1, path="f", size=1, mode=0o644, mtime_ns=TOO_LATE_NS + 5, base_hash=b"b" * 16
        ),
        SmallFile(
            seq=1, path="f", size=1, mode=0o644, mtime_ns=2**64 - 1, data=b"x", hash=b"h" * 16
        ),
        SetAttr(seq=1, path="f", mode=0o644, mtime_ns=TOO_LATE_NS),
    ],
    ids=lambda m: type(m).__name__,
)
def test_an_mtime_a_target_cannot_store_is_refused_off_the_wire(message: AnyMessage) -> None:
    with pytest.raises(ProtocolError, match="mtime_ns"):
        decode_payload(ENCODER.encode(message))
    before_1970 = msgspec.structs.replace(message, mtime_ns=-1)  # type: ignore[type-var]
    assert decode_payload(ENCODER.encode(before_1970)) == before_1970


def test_an_unstorable_mtime_that_got_past_the_wire_is_refused_not_half_committed(
    folder: TargetFolder,
) -> None:
    # Was: the files renamed into place, then the manifest write raised OverflowError: visible
    # files the manifest did not know, no Ack and no Error, the same batch resent for ever.
    session = ReceiverSession(folder, "j", lambda *_: None)
    replies = session.apply_batch(
        [_small(1, "ok", b"ok"), _small(2, "poison", b"p", mtime_ns=TOO_LATE_NS), Checkpoint(seq=2)]
    )
    assert replies == [Ack(mapping_id=1, watermark=2)]
    assert sorted(os.listdir(folder.root)) == ["ok"] and folder.manifest.get("ok") is not None
    replies = session.apply_batch(
        [SetAttr(seq=3, path="ok", mode=0o600, mtime_ns=TOO_LATE_NS), Checkpoint(seq=3)]
    )
    assert replies == [Ack(mapping_id=1, watermark=3)]  # refused and recorded, the session goes on
    assert folder.manifest.get("ok").mtime_ns == T0  # type: ignore[union-attr]


def test_an_unstorable_mtime_in_a_new_directory_is_refused_too(folder: TargetFolder) -> None:
    """The second file of a mode there goes in one compiled call, which took the mtime before
    the refusal (review: OverflowError, no Ack and no Error, the directory left staged)."""
    session = ReceiverSession(folder, "j", lambda *_: None)
    replies = session.apply_batch(
        [
            MakeDir(seq=1, path="d", mode=0o755),
            _small(2, "d/ok", b"ok"),
            _small(3, "d/poison", b"p", mtime_ns=TOO_LATE_NS),
            _small(4, "d/poison-early", b"p", mtime_ns=-TOO_LATE_NS - 1),
            Checkpoint(seq=4),
        ]
    )
    assert replies == [Ack(mapping_id=1, watermark=4)]
    assert sorted(os.listdir(folder.root)) == ["d"] and os.listdir(folder.root / "d") == ["ok"]
    assert folder.manifest.get("d/ok") is not None and folder.manifest.get("d/poison") is None


@pytest.mark.parametrize(("path", "new_path"), [("d", "d/sub"), ("d/sub", "d")])
def test_a_rename_into_itself_or_over_its_ancestor_is_refused_not_retried(
    folder: TargetFolder, path: str, new_path: str
) -> None:
    session = ReceiverSession(folder, "j", lambda *_: None)
    session.apply_batch(
        [
            MakeDir(seq=1, path="d", mode=0o755),
            MakeDir(seq=2, path="d/sub", mode=0o755),
            _small(3, "d/sub/keep", b"keep"),
            Checkpoint(seq=3),
        ]
    )
    replies = session.apply_batch([Rename(seq=4, path=path, new_path=new_path), Checkpoint(seq=4)])
    assert replies == [Ack(mapping_id=1, watermark=4)]  # refused and recorded; the stream goes on
    assert (folder.root / "d" / "sub" / "keep").read_bytes() == b"keep"


def test_one_nm_members_rename_and_link_never_let_another_write_outside_the_root(
    tmp_path: Path,
) -> None:
    """Members of an N:M job share the root, its lock and its cache of proven directories (as the
    agent opens them): B moves `d` away and links `d` outside; A's next write under `d` is refused."""
    outside = tmp_path / "outside"
    outside.mkdir()
    a, b = nm_members(tmp_path)
    session_a, session_b = (
        session_for(a, "ja", lambda *_: None),
        session_for(b, "jb", lambda *_: None),
    )
    session_a.apply_batch(
        [_small(1, "d/x", b"a"), _small(2, "d/z", b"a"), Checkpoint(seq=2)]
    )  # d proven real
    session_b.apply_batch(
        [
            Rename(seq=1, path="d", new_path="e"),
            Symlink(seq=2, path="d", target=str(outside)),
            Checkpoint(seq=2),
        ]
    )
    session_a.apply_batch([_small(3, "d/y", b"through the link?"), Checkpoint(seq=3)])
    assert os.listdir(outside) == []


def test_an_unauthenticated_plain_client_cannot_make_the_server_hold_a_large_buffer() -> None:
    """The plain path takes frames of PREAUTH_MAX_MESSAGE_BYTES until the link authenticates:
    a header announcing 4 MiB is refused, not answered with a 4 MiB buffer."""
    seen: list[BaseException | None] = []

    async def main() -> None:
        listener = socket.create_server(("127.0.0.1", 0))
        client = socket.create_connection(listener.getsockname())
        server_side, _ = listener.accept()
        server_side.setblocking(False)
        framed = await wrap_accepted(server_side, max_message_bytes=PREAUTH_MAX_MESSAGE_BYTES)
        client.sendall(struct.pack(">I", MAX_MESSAGE_BYTES - 1) + b"\x81")
        try:
            with anyio.fail_after(5):
                await framed.receive()
            seen.append(None)
        except FrameTooLarge as exc:
            seen.append(exc)
        assert len(framed.protocol._buf) < MAX_MESSAGE_BYTES
        framed.abort()
        client.close()
        listener.close()

    anyio.run(main, backend="asyncio")
    assert isinstance(seen[0], FrameTooLarge)
