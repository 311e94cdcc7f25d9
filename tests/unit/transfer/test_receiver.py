"""The receiver applied directly: atomic commit, refusals, idempotent replays; small files in one message."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest
import xxhash

from relaysync.protocol.messages import (
    Ack,
    Checkpoint,
    CommitRecord,
    Delete,
    DeltaStart,
    Erase,
    Error,
    ErrorCode,
    FileChunk,
    FileEnd,
    FileStart,
    MakeDir,
    Rename,
    SetAttr,
    SmallFile,
    Symlink,
)
from relaysync.transfer.codec import codec_for_level, encode_chunk
from relaysync.transfer.receiver import ReceiverSession
from relaysync.transfer.recoding import as_streamed
from relaysync.transfer.target_folder import TargetFolder
from relaysync.watch.manifest import Manifest
from tests._trees import snapshot, temp_files


@pytest.fixture
def folder(tmp_path: Path) -> TargetFolder:
    root = tmp_path / "root"
    root.mkdir()
    return TargetFolder(
        mapping_id=1,
        source_node="src",
        root=root,
        manifest=Manifest(tmp_path / "m.db"),
        durable=True,
    )


def _file(seq: int, path: str, data: bytes, *, digest: bytes | None = None) -> list:
    msgs: list = [
        FileStart(
            seq=seq, path=path, size=len(data), mode=0o640, mtime_ns=1_700_000_000_000_000_000
        )
    ]
    for off in range(0, len(data), 1000):
        msgs.append(FileChunk(seq=seq, offset=off, data=data[off : off + 1000]))
    msgs.append(FileEnd(seq=seq, hash=digest or xxhash.xxh3_128(data).digest()))
    return msgs


def test_files_committed_with_mode_mtime_and_watermark(folder: TargetFolder) -> None:
    reports: list[tuple[int, list[CommitRecord]]] = []
    s = ReceiverSession(folder, "j1", lambda wm, recs: reports.append((wm, list(recs))))
    replies = s.apply_batch(
        _file(1, "a/b.txt", b"x" * 2500) + _file(2, "c", b"") + [Checkpoint(seq=2)]
    )
    assert replies == [Ack(mapping_id=1, watermark=2)]
    assert (folder.root / "a" / "b.txt").read_bytes() == b"x" * 2500
    st = os.stat(folder.root / "a" / "b.txt")
    assert st.st_mode & 0o777 == 0o640 and st.st_mtime_ns == 1_700_000_000_000_000_000
    assert folder.watermark("j1") == 2
    assert [r.seq for r in reports[0][1]] == [1, 2]
    assert folder.manifest.get("a/b.txt") is not None


def test_hash_mismatch_keeps_old_file_and_watermark(folder: TargetFolder) -> None:
    (folder.root / "f").write_bytes(b"old")
    s = ReceiverSession(folder, "j1", lambda *_: None)
    replies = s.apply_batch(_file(1, "f", b"new content", digest=b"\0" * 16) + [Checkpoint(seq=1)])
    assert len(replies) == 1 and isinstance(replies[0], Error)
    assert replies[0].code == ErrorCode.HASH_MISMATCH
    assert (folder.root / "f").read_bytes() == b"old"
    assert temp_files(folder.root) == []
    assert folder.watermark("j1") == 0


def test_session_closed_mid_file_leaves_old_and_no_temp(folder: TargetFolder) -> None:
    (folder.root / "f").write_bytes(b"old")
    s = ReceiverSession(folder, "j1", lambda *_: None)
    s.apply_batch(_file(1, "f", b"n" * 5000)[:3])  # start and two chunks, then the link drops
    s.close()
    assert (folder.root / "f").read_bytes() == b"old"
    assert temp_files(folder.root) == []


def test_unsafe_paths_refused_and_skipped(folder: TargetFolder) -> None:
    reports: list = []
    s = ReceiverSession(folder, "j1", lambda wm, recs: reports.extend(recs))
    replies = s.apply_batch(
        _file(1, "../evil", b"e")
        + [
            Delete(seq=2, path="../root"),
            Rename(seq=3, path="x", new_path="/abs"),
            Checkpoint(seq=3),
        ]
    )
    assert replies == [Ack(mapping_id=1, watermark=3)]
    assert [r.ok for r in reports] == [False, False, False]
    assert list(folder.root.iterdir()) == []
    assert not (folder.root.parent / "evil").exists()


def test_ops_are_idempotent(folder: TargetFolder) -> None:
    batch = (
        [MakeDir(seq=1, path="d", mode=0o755)]
        + _file(2, "d/f", b"data")
        + [
            Rename(seq=3, path="d/f", new_path="d/g"),
            Symlink(seq=4, path="l", target="d/g"),
            SetAttr(seq=5, path="d/g", mode=0o600, mtime_ns=1_000_000_000),
            Checkpoint(seq=5),
        ]
    )
    ReceiverSession(folder, "j1", lambda *_: None).apply_batch(batch)
    first = snapshot(folder.root)
    ReceiverSession(folder, "j2", lambda *_: None).apply_batch(batch)  # a replay after a crash
    assert snapshot(folder.root) == first
    assert os.readlink(folder.root / "l") == "d/g"


def test_erase_keeps_listed_names_only(folder: TargetFolder) -> None:
    for name in ("keep", "drop1"):
        (folder.root / name).write_text(name)
    (folder.root / "dropdir").mkdir()
    (folder.root / "dropdir" / "x").write_text("x")
    s = ReceiverSession(folder, "j1", lambda *_: None)
    s.apply_batch([Erase(seq=0, path="", keep=("keep",)), Checkpoint(seq=0)])
    assert sorted(p.name for p in folder.root.iterdir()) == ["keep"]


def test_file_replaces_directory_and_link(folder: TargetFolder) -> None:
    (folder.root / "x").mkdir()
    (folder.root / "x" / "inner").write_text("i")
    os.symlink("/etc", folder.root / "y")
    s = ReceiverSession(folder, "j1", lambda *_: None)
    s.apply_batch(_file(1, "x", b"now a file") + _file(2, "y", b"not a link") + [Checkpoint(seq=2)])
    assert (folder.root / "x").read_bytes() == b"now a file"
    assert not (folder.root / "y").is_symlink()
    assert (folder.root / "y").read_bytes() == b"not a link"


def test_commit_records_carry_the_change_time_and_commit_after_it(folder: TargetFolder) -> None:
    import time

    reports: list[CommitRecord] = []
    s = ReceiverSession(folder, "j1", lambda wm, recs: reports.extend(recs))
    changed = time.time() - 2.0
    start = FileStart(seq=1, path="a", size=3, mode=0o644, mtime_ns=0, changed_at=changed)
    s.apply_batch(
        [
            start,
            FileChunk(seq=1, offset=0, data=b"abc"),
            FileEnd(seq=1, hash=xxhash.xxh3_128(b"abc").digest()),
            MakeDir(seq=2, path="d", changed_at=changed + 1),
            Delete(seq=3, path="a"),
            Checkpoint(seq=3),
        ]
    )
    assert [(r.seq, r.changed_at) for r in reports] == [(1, changed), (2, changed + 1), (3, 0.0)]
    for r in reports:
        assert r.committed_at - r.changed_at >= r.duration_ms / 1000.0  # latency >= transfer time


MTIME_NS = 1_700_000_000_000_000_000


def _small(seq: int, path: str, data: bytes, **over: object) -> SmallFile:
    msg = SmallFile(
        seq=seq,
        path=path,
        size=len(data),
        mode=0o640,
        mtime_ns=MTIME_NS,
        data=data,
        hash=xxhash.xxh3_128_digest(data),
    )
    return msgspec.structs.replace(msg, **over) if over else msg


def test_small_files_committed_in_one_message_each(folder: TargetFolder) -> None:
    reports: list[CommitRecord] = []
    s = ReceiverSession(folder, "j1", lambda wm, recs: reports.extend(recs))
    text = b"a small text file, compressed on the wire\n" * 200
    codec_id, packed = encode_chunk(text, codec_for_level(3))
    replies = s.apply_batch(
        [
            _small(1, "a/b.bin", b"x" * 4096),
            _small(2, "empty", b""),
            _small(
                3,
                "t.txt",
                packed,
                size=len(text),
                hash=xxhash.xxh3_128_digest(text),
                codec=codec_id,
            ),
            Checkpoint(seq=3),
        ]
    )
    assert replies == [Ack(mapping_id=1, watermark=3)]
    assert (folder.root / "a" / "b.bin").read_bytes() == b"x" * 4096
    assert (folder.root / "empty").read_bytes() == b"" and (
        folder.root / "t.txt"
    ).read_bytes() == text
    st = os.stat(folder.root / "a" / "b.bin")
    assert st.st_mode & 0o777 == 0o640 and st.st_mtime_ns == MTIME_NS
    assert [(r.seq, r.ok, r.size) for r in reports] == [
        (1, True, 4096),
        (2, True, 0),
        (3, True, len(text)),
    ]
    assert reports[2].wire_bytes == len(packed)
    entry = folder.manifest.get("a/b.bin")
    assert entry is not None and entry.hash == xxhash.xxh3_128_digest(b"x" * 4096)
    assert temp_files(folder.root) == []


@pytest.mark.parametrize(
    "bad",
    [
        {"hash": b"\0" * 16},  # a bit flipped on the wire: not the bytes the source hashed
        {"size": 3},  # more bytes than announced
        {"codec": 3},  # not zstd data: undecodable
        {"codec": 99},  # an unknown codec
    ],
)
def test_a_corrupt_small_file_is_refused_and_never_committed(
    folder: TargetFolder, bad: dict
) -> None:
    (folder.root / "f").write_bytes(b"old")
    s = ReceiverSession(folder, "j1", lambda *_: None)
    replies = s.apply_batch([_small(1, "f", b"new content", **bad), Checkpoint(seq=1)])
    assert len(replies) == 1 and isinstance(replies[0], Error) and replies[0].seq == 1
    assert replies[0].code in (ErrorCode.HASH_MISMATCH, ErrorCode.BAD_MESSAGE)
    assert (folder.root / "f").read_bytes() == b"old"
    assert temp_files(folder.root) == [] and folder.watermark("j1") == 0


@pytest.mark.parametrize("bad", [{"hash": b"\0" * 16}, {"size": 3}, {"size": 20}])
def test_a_corrupt_small_file_never_reaches_the_disk(
    folder: TargetFolder, bad: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its bytes are checked in memory before anything is written: no temp file is even made."""
    created: list[str] = []
    real_open = os.open

    def recording_open(path: str, flags: int, *args: object, **kwargs: object) -> int:
        if flags & os.O_CREAT:
            created.append(os.fspath(path))
        return real_open(path, flags, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "open", recording_open)
    s = ReceiverSession(folder, "j1", lambda *_: None)
    replies = s.apply_batch([_small(1, "d/f", b"new content", **bad), Checkpoint(seq=1)])
    assert len(replies) == 1 and isinstance(replies[0], Error) and replies[0].seq == 1
    assert replies[0].code in (ErrorCode.HASH_MISMATCH, ErrorCode.BAD_MESSAGE)
    assert created == [] and not (folder.root / "d" / "f").exists()


def test_a_small_file_written_in_short_writes_is_whole(
    folder: TargetFolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write(2) may take fewer bytes than given: the rest is written, not lost."""
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, bytes(data)[:1000]))
    data = os.urandom(40_000)  # over one WRITE_PIECE_BYTES as well
    s = ReceiverSession(folder, "j1", lambda *_: None)
    replies = s.apply_batch([_small(1, "f", data), _small(2, "g", b"x" * 1500), Checkpoint(seq=2)])
    assert replies == [Ack(mapping_id=1, watermark=2)]
    assert (folder.root / "f").read_bytes() == data
    assert (folder.root / "g").read_bytes() == b"x" * 1500


def test_a_small_file_at_an_unsafe_path_is_refused(folder: TargetFolder) -> None:
    reports: list[CommitRecord] = []
    s = ReceiverSession(folder, "j1", lambda wm, recs: reports.extend(recs))
    replies = s.apply_batch(
        [_small(1, "../evil", b"e"), _small(2, "ok", b"fine"), Checkpoint(seq=2)]
    )
    assert replies == [Ack(mapping_id=1, watermark=2)]
    assert [r.ok for r in reports] == [False, True]
    assert (
        not (folder.root.parent / "evil").exists() and (folder.root / "ok").read_bytes() == b"fine"
    )


def test_a_small_file_over_the_limit_is_refused_at_decode() -> None:
    from relaysync.constants import SMALL_FILE_BYTES
    from relaysync.errors import ProtocolError
    from relaysync.protocol.framing import decode_payload, encode_frame

    big = _small(1, "f", b"x" * (SMALL_FILE_BYTES + 1))
    with pytest.raises(ProtocolError, match="small-file limit"):
        decode_payload(encode_frame(big)[4:])


@pytest.mark.parametrize("size", [3, 5])
def test_a_small_file_whose_data_is_not_its_size_is_malformed_at_decode(size: int) -> None:
    from relaysync.errors import ProtocolError
    from relaysync.protocol.framing import decode_payload, encode_frame

    with pytest.raises(ProtocolError, match="4 bytes of data for a size of"):
        decode_payload(encode_frame(_small(1, "f", b"data", size=size))[4:])


@pytest.mark.parametrize("kind", ["small", "streamed"])
def test_a_path_that_cannot_be_checked_is_a_per_file_io_error(
    folder: TargetFolder, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EIO while checking the path (a disk error we cannot cause for real here): the source gets
    IO_ERROR for that seq and retries; nothing is written."""
    s = ReceiverSession(folder, "j1", lambda *_: None)

    def failing(reldir: str, *, create: bool = False) -> int:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(s._dirs, "get", failing)
    messages = [_small(1, "f", b"data")] if kind == "small" else _file(1, "f", b"data")
    replies = s.apply_batch([*messages, Checkpoint(seq=1)])
    assert len(replies) == 1 and isinstance(replies[0], Error)
    assert (replies[0].seq, replies[0].code) == (1, ErrorCode.IO_ERROR)
    assert not (folder.root / "f").exists() and temp_files(folder.root) == []


@pytest.mark.parametrize("kind", ["small", "streamed", "delta", "mkdir", "delete"])
def test_a_path_too_long_for_the_target_is_written_or_refused_never_retried_for_ever(
    folder: TargetFolder, kind: str
) -> None:
    """A relative path within MAX_PATH_BYTES that is over PATH_MAX below this target's root.
    Files and directories are made, deleted, and a delta's base looked for, relative to their
    directory (no PATH_MAX from the root): they arrive, and the changes after them flow (an
    ENAMETOOLONG was an IO_ERROR the source retried for ever, blocking the mapping). The delta's
    base is not here: the source is asked for the whole file, which arrives as `streamed`."""
    path = "/".join(["n" * 255] * 16)  # 4095 bytes: within the wire's limit, not below a root
    assert len(f"{folder.root}/{path}".encode()) > 4096
    delta = DeltaStart(
        seq=1, path=path, size=4, mode=0o644, mtime_ns=MTIME_NS, base_hash=b"\1" * 16
    )
    messages = {
        "small": [_small(1, path, b"data")],
        "streamed": _file(1, path, b"data"),
        "delta": [delta, FileChunk(seq=1, offset=0, data=b"rs"), FileEnd(seq=1, hash=b"\2" * 16)],
        "mkdir": [MakeDir(seq=1, path=path)],
        "delete": [Delete(seq=1, path=path)],
    }[kind]
    reports: list = []
    s = ReceiverSession(folder, "j1", lambda w, r: reports.append(r))
    if kind == "delta":
        (reply,) = s.apply_batch([*messages, Checkpoint(seq=1)])
        assert isinstance(reply, Error) and reply.code == ErrorCode.BASE_MISMATCH, reply
        messages = []
    replies = s.apply_batch([*messages, _small(2, "after", b"later"), Checkpoint(seq=2)])
    assert replies == [Ack(mapping_id=1, watermark=2)], replies
    records = {r.seq: r for batch in reports for r in batch}
    if kind in ("small", "streamed", "mkdir"):
        assert records[1].ok and (folder.manifest.get(path) is not None)
    elif kind == "delete":
        assert records[1].ok and folder.manifest.get(path) is None
    assert (folder.root / "after").read_bytes() == b"later"
    assert not [n for n in os.listdir(folder.root) if n.startswith(".relaysync")]


def test_a_small_file_converted_for_an_older_release_commits_the_same(folder: TargetFolder) -> None:
    """What a relay sends a child that does not take SmallFile: FileStart, FileChunk, FileEnd."""
    text = b"compressed on the wire, as its parent sent it\n" * 100
    codec_id, packed = encode_chunk(text, codec_for_level(3))
    small = [
        _small(1, "a/b.bin", b"x" * 4096),
        _small(2, "empty", b""),
        _small(
            3, "t.txt", packed, size=len(text), hash=xxhash.xxh3_128_digest(text), codec=codec_id
        ),
    ]
    streamed = [m for msg in small for m in as_streamed(msg)]
    assert not any(isinstance(m, SmallFile) for m in streamed)
    for m in streamed:
        m.validate()
    s = ReceiverSession(folder, "j1", lambda *_: None)
    assert s.apply_batch([*streamed, Checkpoint(seq=3)]) == [Ack(mapping_id=1, watermark=3)]
    assert (folder.root / "a" / "b.bin").read_bytes() == b"x" * 4096
    assert (folder.root / "empty").read_bytes() == b"" and (
        folder.root / "t.txt"
    ).read_bytes() == text
    assert os.stat(folder.root / "t.txt").st_mtime_ns == MTIME_NS
