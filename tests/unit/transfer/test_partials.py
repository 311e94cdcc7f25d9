"""Resumable partials of large files on a target: one per (mapping, file, version), never shared,
never left behind once nothing can resume them, and temp names that always fit NAME_MAX."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash

from relaysync.constants import CHUNK_BYTES, MAX_NAME_BYTES, TEMP_PREFIX
from relaysync.protocol.messages import (
    Ack,
    AnyMessage,
    Checkpoint,
    Delete,
    DeltaStart,
    Erase,
    Error,
    ErrorCode,
    FileChunk,
    FileEnd,
    FileStart,
    MakeDir,
    PartialRef,
    Rename,
    SmallFile,
)
from relaysync.transfer import ops, staging, target_folder
from relaysync.transfer.conflicts import NEWEST_MTIME, ConflictSession
from relaysync.transfer.receiver import ReceiverSession
from relaysync.transfer.signatures import SignatureStore
from relaysync.transfer.target_folder import RESUME_MIN_BYTES, TargetFolder
from relaysync.watch.changes import JournalRecord
from relaysync.watch.manifest import Entry, Manifest
from tests.unit.transfer._target_helpers import held_dirs, open_partial, open_temp

_held_dirs = pytest.fixture(autouse=True)(held_dirs)

BIG = RESUME_MIN_BYTES + CHUNK_BYTES  # gets a named, resumable partial
MTIME = 1_700_000_000_000_000_000


def _folder(
    tmp_path: Path, mapping_id: int = 1, root: Path | None = None, **kw: object
) -> TargetFolder:
    if root is None:
        root = tmp_path / "root"
        root.mkdir(exist_ok=True)
    return TargetFolder(
        mapping_id=mapping_id,
        source_node=f"src-{mapping_id}",
        root=root,
        manifest=Manifest(tmp_path / f"m{mapping_id}.db"),
        durable=False,
        **kw,
    )  # type: ignore[arg-type]


def _start(seq: int, path: str, data: bytes) -> FileStart:
    return FileStart(
        seq=seq,
        path=path,
        size=len(data),
        mode=0o644,
        mtime_ns=MTIME,
        expected_hash=xxhash.xxh3_128(data).digest(),
    )


def _chunks(seq: int, data: bytes, lo: int = 0, hi: int | None = None) -> list[AnyMessage]:
    end = len(data) if hi is None else hi
    return [
        FileChunk(seq=seq, offset=o, data=data[o : o + CHUNK_BYTES])
        for o in range(lo, end, CHUNK_BYTES)
    ]


def _whole(seq: int, path: str, data: bytes) -> list[AnyMessage]:
    return [
        _start(seq, path, data),
        *_chunks(seq, data),
        FileEnd(seq=seq, hash=xxhash.xxh3_128(data).digest()),
    ]


def _temps(root: Path) -> list[str]:
    return sorted(
        str(p.relative_to(root)) for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX)
    )


def _interrupted(folder: TargetFolder, path: str, data: bytes) -> None:
    """A large file cut off after 2 MiB: the session ends and keeps the partial (to resume)."""
    session = ReceiverSession(folder, "j", lambda *_: None)
    assert session.apply_batch([_start(1, path, data), *_chunks(1, data, 0, 2 * CHUNK_BYTES)]) == []
    session.close()
    assert [p.path for p in folder.list_partials()] == [path]


def _after_restart(folder: TargetFolder) -> list[str]:
    """The temp files a restart keeps (it removes every temp file but the listed partials)."""
    staging.clean_stale_temps(folder.root, keep=folder.partial_files())
    return _temps(folder.root)


@pytest.mark.parametrize(
    "op", ["delete", "rename", "small file", "directory", "erase", "newer version"]
)
def test_a_partial_goes_with_the_file_it_would_have_become(tmp_path: Path, op: str) -> None:
    folder = _folder(tmp_path)
    (folder.root / "sub").mkdir()
    _interrupted(folder, "sub/big.bin", os.urandom(BIG))
    (folder.root / "sub" / "big.bin").write_bytes(b"the version the target held")
    small = b"tiny"
    msgs: list[AnyMessage] = {
        "delete": [Delete(seq=2, path="sub/big.bin")],
        "rename": [Rename(seq=2, path="sub/big.bin", new_path="moved.bin")],
        "small file": [
            SmallFile(
                seq=2,
                path="sub/big.bin",
                size=4,
                mode=0o644,
                mtime_ns=MTIME,
                data=small,
                hash=xxhash.xxh3_128(small).digest(),
            )
        ],
        "directory": [
            Delete(seq=2, path="sub/big.bin"),
            MakeDir(seq=3, path="sub/big.bin", mode=0o755),
        ],
        "erase": [Erase(seq=2, path="sub", keep=())],
        "newer version": _whole(2, "sub/big.bin", os.urandom(BIG)),
    }[op]
    last = max(int(getattr(m, "seq", 0)) for m in msgs)
    session = ReceiverSession(folder, "j", lambda *_: None)
    assert session.apply_batch([*msgs, Checkpoint(seq=last)]) == [Ack(mapping_id=1, watermark=last)]
    session.close()
    assert _temps(folder.root) == []  # at once, not only at the next start
    assert folder.list_partials() == () and _after_restart(folder) == []


def test_an_older_versions_partial_goes_when_a_newer_one_starts(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    _interrupted(folder, "big.bin", os.urandom(BIG))
    newer = os.urandom(BIG)
    session = ReceiverSession(folder, "j", lambda *_: None)
    session.apply_batch([_start(2, "big.bin", newer), *_chunks(2, newer, 0, CHUNK_BYTES)])
    assert len(_temps(folder.root)) == 1  # the newer one's only
    session.close()


def test_a_removed_mapping_leaves_no_partial(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    _interrupted(folder, "big.bin", os.urandom(BIG))
    folder.drop_partials_under("")  # what the peer server does when it retires the folder
    assert _temps(folder.root) == [] and folder.list_partials() == ()


def test_the_same_version_twice_in_one_batch_commits(tmp_path: Path) -> None:
    """A large file written V1, V2, back to V1 while the target was away: the three records go in
    one batch (the links read the journal as it is), two of them with the same content hash."""
    src = tmp_path / "src"
    src.mkdir()
    v1, v2 = os.urandom(BIG), os.urandom(BIG)
    (src / "big.bin").write_bytes(v1)  # what the file holds when the link replays
    h1, h2 = xxhash.xxh3_128(v1).digest(), xxhash.xxh3_128(v2).digest()
    records = [
        JournalRecord(
            seq=s,
            op="write",
            path="big.bin",
            entry=Entry(path="big.bin", kind="f", size=BIG, hash=h),
        )
        for s, h in ((5, h1), (6, h2), (7, h1))
    ]
    msgs = [m for r in records for m in ops.record_messages(src, r, ops.SendOptions())]
    folder = _folder(tmp_path)
    session = ReceiverSession(folder, "j", lambda *_: None)
    assert session.apply_batch([*msgs, Checkpoint(seq=7)]) == [Ack(mapping_id=1, watermark=7)]
    assert (folder.root / "big.bin").read_bytes() == v1
    assert _temps(folder.root) == []


def test_two_long_names_that_share_their_beginning_get_their_own_partials(tmp_path: Path) -> None:
    folder = _folder(tmp_path)
    data = os.urandom(BIG)
    stem = "x" * 200
    msgs = [*_whole(1, f"{stem}-a.iso", data), *_whole(2, f"{stem}-b.iso", data), Checkpoint(seq=2)]
    session = ReceiverSession(folder, "j", lambda *_: None)
    assert session.apply_batch(msgs) == [Ack(mapping_id=1, watermark=2)]
    assert (
        (folder.root / f"{stem}-a.iso").read_bytes()
        == data
        == (folder.root / f"{stem}-b.iso").read_bytes()
    )


@pytest.mark.parametrize("size", [100, BIG], ids=["temp file", "partial"])
def test_a_name_of_255_bytes_in_three_byte_characters_fits_its_temp_name(
    tmp_path: Path, size: int
) -> None:
    name = "文" * (MAX_NAME_BYTES // 3)  # 85 characters, 255 bytes: the longest name ext4 takes
    data = os.urandom(size)
    msgs: list[AnyMessage] = (
        [
            SmallFile(
                seq=1,
                path=name,
                size=size,
                mode=0o644,
                mtime_ns=MTIME,
                data=data,
                hash=xxhash.xxh3_128(data).digest(),
            )
        ]
        if size < RESUME_MIN_BYTES
        else _whole(1, name, data)
    )
    folder = _folder(tmp_path)
    session = ReceiverSession(folder, "j", lambda *_: None)
    assert session.apply_batch([*msgs, Checkpoint(seq=1)]) == [Ack(mapping_id=1, watermark=1)]
    assert (folder.root / name).read_bytes() == data


def test_two_members_of_an_nm_job_receiving_the_same_large_file_never_share_a_partial(
    tmp_path: Path,
) -> None:
    """Members share the target folder and apply their streams concurrently (a worker thread each)."""
    root = tmp_path / "root"
    root.mkdir()
    lock = threading.RLock()
    a = _folder(tmp_path, 1, root, conflict=NEWEST_MTIME, lock=lock)
    b = _folder(tmp_path, 2, root, conflict=NEWEST_MTIME, lock=lock)
    session_a, session_b = (
        ConflictSession(a, "ja", lambda *_: None),
        ConflictSession(b, "jb", lambda *_: None),
    )
    data = os.urandom(BIG)
    digest = xxhash.xxh3_128(data).digest()
    # interleaved at batch boundaries, as the two worker threads may run them
    assert (
        session_a.apply_batch([_start(1, "same.bin", data), *_chunks(1, data, 0, 4 * CHUNK_BYTES)])
        == []
    )
    assert (
        session_b.apply_batch([_start(1, "same.bin", data), *_chunks(1, data, 0, CHUNK_BYTES)])
        == []
    )
    replies = session_a.apply_batch(
        [*_chunks(1, data, 4 * CHUNK_BYTES), FileEnd(seq=1, hash=digest), Checkpoint(seq=1)]
    )
    assert replies == [Ack(mapping_id=1, watermark=1)]
    assert (root / "same.bin").read_bytes() == data
    session_b.close()  # b's link drops: its own partial stays for b to resume
    assert [p.path for p in b.list_partials()] == ["same.bin"]
    assert (root / "same.bin").read_bytes() == data


def test_a_name_too_long_for_a_version_stamp_is_replaced_without_a_kept_version(
    tmp_path: Path,
) -> None:
    """With version keeping on, `<name>@<stamp>` of a 250-byte name passes NAME_MAX: that version
    is not kept (logged), and the change still commits instead of blocking the mapping."""
    folder = _folder(tmp_path, keep_versions=3)
    name = "v" * 250
    (folder.root / name).write_bytes(b"old")
    new = b"new"
    session = ReceiverSession(folder, "j", lambda *_: None)
    replies = session.apply_batch(
        [
            SmallFile(
                seq=1,
                path=name,
                size=3,
                mode=0o644,
                mtime_ns=MTIME,
                data=new,
                hash=xxhash.xxh3_128(new).digest(),
            ),
            Checkpoint(seq=1),
        ]
    )
    assert replies == [Ack(mapping_id=1, watermark=1)]
    assert (folder.root / name).read_bytes() == new


# --- a large file received whole and verified, staged but not committed when the batch ends ---

STAGED = (
    RESUME_MIN_BYTES + 8 * CHUNK_BYTES
)  # 16 MiB, a whole number of chunks: it resumes at its end


def _source_files(
    tmp_path: Path, names: tuple[str, ...], mode: int = 0o644
) -> tuple[Path, list[JournalRecord]]:
    src = tmp_path / "src"
    src.mkdir()
    records = []
    for seq, name in enumerate(names, 1):
        data = os.urandom(STAGED)
        (src / name).write_bytes(data)
        os.chmod(src / name, mode)
        records.append(
            JournalRecord(
                seq=seq,
                op="write",
                path=name,
                entry=Entry(path=name, kind="f", size=STAGED, hash=xxhash.xxh3_128(data).digest()),
            )
        )
    return src, records


def _sent(src: Path, records: list[JournalRecord], folder: TargetFolder) -> list[AnyMessage]:
    """What a link sends in a session: from the resume offsets of the target's MappingState."""
    options = ops.SendOptions(resume={(p.path, p.hash): p.size for p in folder.list_partials()})
    return [
        m
        for r in records
        for m in ops.record_messages(src, r, options)
        if not isinstance(m, ops.Flush)
    ]


def _data_bytes(msgs: list[AnyMessage], seq: int) -> int:
    return sum(len(m.data) for m in msgs if isinstance(m, FileChunk) and m.seq == seq)


def _end_of(msgs: list[AnyMessage], seq: int) -> int:
    return next(i for i, m in enumerate(msgs) if isinstance(m, FileEnd) and m.seq == seq)


@pytest.mark.parametrize("cut", ["link drops", "a later op fails"])
def test_a_verified_large_file_staged_when_the_batch_ends_is_not_sent_again(
    tmp_path: Path, cut: str
) -> None:
    """a.bin arrives whole (FileEnd verified) and waits for the Checkpoint; then the link drops
    mid b.bin, or a later op of the batch fails (a delta whose base this target lacks)."""
    src, records = _source_files(
        tmp_path, ("a.bin", "b.bin"), mode=0o444
    )  # read-only: resumed all the same
    folder = _folder(tmp_path)
    first = _sent(src, records, folder)
    end_a = _end_of(first, 1)
    session = ReceiverSession(folder, "j", lambda *_: None)
    if cut == "link drops":
        assert (
            session.apply_batch(first[: end_a + 1 + 1 + 4]) == []
        )  # b.bin's FileStart and 4 chunks
    else:
        delta = DeltaStart(
            seq=2, path="c.txt", size=10, mode=0o644, mtime_ns=1, base_hash=b"x" * 16
        )
        replies = session.apply_batch([*first[: end_a + 1], delta])
        assert [type(r) for r in replies] == [Error]
    session.close()
    assert {p.path: p.size for p in folder.list_partials()}["a.bin"] == STAGED
    assert _after_restart(folder)  # a restart keeps it too

    again = _sent(src, records, folder)
    assert _data_bytes(again, 1) == 0  # at most "not verified + one chunk": here nothing
    assert next(m for m in again if isinstance(m, FileStart) and m.seq == 1).offset == STAGED
    session = ReceiverSession(folder, "j", lambda *_: None)
    assert session.apply_batch([*again, Checkpoint(seq=2)]) == [Ack(mapping_id=1, watermark=2)]
    for name in ("a.bin", "b.bin"):
        assert (folder.root / name).read_bytes() == (src / name).read_bytes()
    assert folder.list_partials() == () and _temps(folder.root) == []


def test_a_failed_commit_keeps_the_staged_partials_and_removes_the_other_temp_files(
    tmp_path: Path,
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    big, small = os.urandom(BIG), b"small"
    partial = open_partial(
        root,
        root / "big.bin",
        xxhash.xxh3_128(big).digest(),
        owner=1,
        size=BIG,
        mode=0o444,
        mtime_ns=MTIME,
        offset=0,
    )
    temp = open_temp(root, root / "small.txt", size=len(small), mode=0o644, mtime_ns=MTIME)
    for incoming, data in ((partial, big), (temp, small)):
        incoming.append(data)
        incoming.finish(xxhash.xxh3_128(data).digest())

    def no_space(*_args: object) -> None:  # the version keeper could not save the old version
        raise OSError(28, "No space left on device")

    batch = staging.CommitBatch(durable=False, before_replace=no_space)
    batch.add(partial)
    batch.add(temp)
    with pytest.raises(OSError):
        batch.commit()
    assert _temps(root) == [partial.temp.name]
    assert partial.temp.stat().st_mode & 0o777 == 0o600 and partial.temp.read_bytes() == big
    assert partial.fd == -1 and not (root / "big.bin").exists()


# --- a full disk stops a large file: what was received stays, retries resend at most one chunk ---

FULL = 24 * CHUNK_BYTES  # on a 12 MiB disk: about 11 MiB fit


@contextlib.contextmanager
def _tmpfs(mount: Path, size: str) -> Iterator[Path]:
    """A tmpfs of `size` mounted at `mount` (a full disk on demand), unmounted afterwards."""
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    with _tmpfs(tmp_path / "small", "12m") as mount:
        yield mount


def _attempt(
    src: Path, record: JournalRecord, folder: TargetFolder
) -> tuple[int, list[AnyMessage]]:
    """One session of the source's retries: the bytes of file data it sent, and the replies."""
    msgs = _sent(src, [record], folder)
    session = ReceiverSession(folder, "j", lambda *_: None)
    replies = session.apply_batch([*msgs, Checkpoint(seq=1)])
    session.close()
    return _data_bytes(msgs, 1), replies


def _big_on(tmp_path: Path, disk: Path) -> tuple[Path, JournalRecord, TargetFolder]:
    src = tmp_path / "src"
    src.mkdir()
    data = os.urandom(FULL)
    (src / "big.bin").write_bytes(data)
    record = JournalRecord(
        seq=1,
        op="write",
        path="big.bin",
        entry=Entry(path="big.bin", kind="f", size=FULL, hash=xxhash.xxh3_128(data).digest()),
    )
    root = disk / "target"
    root.mkdir()
    folder = TargetFolder(
        mapping_id=1,
        source_node="src",
        root=root,
        manifest=Manifest(tmp_path / "m.db"),
        durable=True,
    )
    return src, record, folder


def _held(folder: TargetFolder) -> int:
    return sum(p.size for p in folder.list_partials())


def test_a_full_disk_keeps_the_whole_chunks_received_and_retries_resend_at_most_one_chunk(
    tmp_path: Path, small_disk: Path
) -> None:
    src, record, folder = _big_on(tmp_path, small_disk)
    held = 0
    for _attempt_no in range(3):  # the source retries after each DISK_FULL
        sent, replies = _attempt(src, record, folder)
        assert [r.code for r in replies if isinstance(r, Error)] == [ErrorCode.DISK_FULL]
        assert sent <= FULL - held + CHUNK_BYTES  # what was not verified, plus one chunk
        held = _held(folder)
        assert held >= 8 * CHUNK_BYTES  # what fitted is kept, cut to whole chunks
        assert [p.stat().st_size for p in small_disk.rglob("*.part")] == [held]
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    sent, replies = _attempt(src, record, folder)  # space is back: the rest only
    assert replies == [Ack(mapping_id=1, watermark=1)]
    assert sent == FULL - held
    assert (folder.root / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    assert folder.list_partials() == () and _temps(folder.root) == []


def test_a_partial_that_stops_growing_on_a_full_disk_is_dropped_after_a_while(
    tmp_path: Path, small_disk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Held for ever, its space could keep other files (another mapping's, another partial
    waiting on this one) from ever fitting: past FULL_DISK_HOLD_S without growing, it goes."""
    monkeypatch.setattr(target_folder, "FULL_DISK_HOLD_S", 0.0)
    src, record, folder = _big_on(tmp_path, small_disk)
    _attempt(src, record, folder)
    held = _held(folder)
    assert held >= 8 * CHUNK_BYTES
    _attempt(src, record, folder)  # no room for one more chunk: not grown, held too long: dropped
    assert folder.list_partials() == () and _temps(folder.root) == []
    sent, _ = _attempt(src, record, folder)  # from byte 0 again, kept again
    assert sent == FULL and _held(folder) >= 8 * CHUNK_BYTES


PATCHED = (
    RESUME_MIN_BYTES + 4 * CHUNK_BYTES
)  # 12 MiB, old and new version, on a disk that cannot hold both


@pytest.fixture(
    params=[
        pytest.param("20m", id="full mid-delta"),
        pytest.param("23m", id="full in the delta's last MiB: seen when it ends"),
    ]
)
def patch_disk(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Path]:
    with _tmpfs(tmp_path / "disk", request.param) as mount:
        yield mount


def _delta_on(
    tmp_path: Path, disk: Path
) -> tuple[Path, JournalRecord, TargetFolder, SignatureStore]:
    """The target (on `disk`) holds v1 and the source its signature; the source then writes v2
    (unrelated data: its delta is about its size): the record of that write, sent as a delta."""
    src, root = tmp_path / "src", disk / "target"
    src.mkdir()
    root.mkdir()
    old, new = os.urandom(PATCHED), os.urandom(PATCHED)
    (src / "big.bin").write_bytes(old)
    (root / "big.bin").write_bytes(old)
    st = os.stat(root / "big.bin")
    base = xxhash.xxh3_128_digest(old)
    folder = TargetFolder(
        mapping_id=1,
        source_node="src",
        root=root,
        manifest=Manifest(tmp_path / "m.db"),
        durable=True,
    )
    folder.manifest.put_many(
        [
            Entry(
                path="big.bin",
                kind="f",
                size=PATCHED,
                mtime_ns=st.st_mtime_ns,
                mode=0o644,
                hash=base,
            )
        ]
    )
    sigs = SignatureStore(tmp_path / "sigs")
    sigs.remember(src, "big.bin", base)
    (src / "big.bin").write_bytes(new)
    record = JournalRecord(
        seq=1,
        op="write",
        path="big.bin",
        base_hash=base,
        entry=Entry(path="big.bin", kind="f", size=PATCHED, hash=xxhash.xxh3_128_digest(new)),
    )
    return src, record, folder, sigs


def _delta_attempt(
    src: Path, record: JournalRecord, folder: TargetFolder, sigs: SignatureStore
) -> tuple[list[AnyMessage], list[AnyMessage]]:
    """One session of the source's retries of a delta: what it sent, and the replies."""
    options = ops.SendOptions(
        signatures=sigs, resume={(p.path, p.hash): p.size for p in folder.list_partials()}
    )
    msgs = [m for m in ops.record_messages(src, record, options) if not isinstance(m, ops.Flush)]
    session = ReceiverSession(folder, "j", lambda *_: None)
    replies = session.apply_batch([*msgs, Checkpoint(seq=1)])
    session.close()
    return msgs, replies


def test_a_full_disk_during_a_delta_keeps_the_whole_chunks_patched_and_resumes_them(
    tmp_path: Path, patch_disk: Path
) -> None:
    """As for a whole file: the delta's output (the new version's partial) is cut to whole chunks
    and kept, and the retries resume it whole from there, resending at most one chunk of it."""
    src, record, folder, sigs = _delta_on(tmp_path, patch_disk)
    msgs, replies = _delta_attempt(src, record, folder, sigs)
    assert isinstance(msgs[0], DeltaStart)
    assert [r.code for r in replies if isinstance(r, Error)] == [ErrorCode.DISK_FULL]
    held = _held(folder)
    assert held >= 4 * CHUNK_BYTES, "the delta's partial was dropped on the full disk"
    assert [p.stat().st_size for p in patch_disk.rglob("*.part")] == [held]
    for _attempt_no in range(2):  # the source retries after each DISK_FULL: the rest, whole
        msgs, replies = _delta_attempt(src, record, folder, sigs)
        assert isinstance(msgs[0], FileStart) and msgs[0].offset == held
        assert [r.code for r in replies if isinstance(r, Error)] == [ErrorCode.DISK_FULL]
        assert _data_bytes(msgs, 1) <= PATCHED - held  # none of what was verified again
        assert _held(folder) == held
    subprocess.run(["mount", "-o", "remount,size=64m", str(patch_disk)], check=True)
    msgs, replies = _delta_attempt(src, record, folder, sigs)
    assert replies == [Ack(mapping_id=1, watermark=1)]
    assert _data_bytes(msgs, 1) == PATCHED - held
    assert (folder.root / "big.bin").read_bytes() == (src / "big.bin").read_bytes()
    assert folder.list_partials() == () and _temps(folder.root) == []


def test_a_staged_read_only_file_stays_writable_for_its_owner_until_committed(
    tmp_path: Path,
) -> None:
    """A verified partial waits for its batch's commit in mode 0600: after a kill -9 there,
    an agent that is not root must still be able to reopen it to resume (0444 would mean an
    EACCES on every retry). The file's own mode is set at commit."""
    data = os.urandom(CHUNK_BYTES + 1)
    incoming = open_partial(
        tmp_path,
        tmp_path / "ro.bin",
        xxhash.xxh3_128_digest(data),
        owner=1,
        size=len(data),
        mode=0o100444,
        mtime_ns=10**18,
        offset=0,
    )
    incoming.append(data)
    incoming.finish(xxhash.xxh3_128_digest(data))
    assert os.stat(incoming.temp_name).st_mode & 0o777 == 0o600
    batch = staging.CommitBatch(durable=True)
    batch.add(incoming)
    batch.commit()
    st = os.stat(tmp_path / "ro.bin")
    assert (st.st_mode & 0o777, st.st_mtime_ns) == (0o444, 10**18)


# Two mappings on one disk, their sessions concurrent: each has a large file received whole and
# verified (staged, waiting for its batch's Checkpoint) when the disk fills during its second
# file. Verified partials kept then would hold their space: neither batch could ever fit again.
TWO_FILES = 14 * CHUNK_BYTES  # two mappings x two files; the 40 MiB disk holds one mapping's two


@pytest.fixture
def disk_40m(tmp_path: Path) -> Iterator[Path]:
    with _tmpfs(tmp_path / "disk", "40m") as mount:
        yield mount


def _disk_mapping(
    tmp_path: Path, disk: Path, mid: int
) -> tuple[Path, list[JournalRecord], TargetFolder]:
    src = tmp_path / f"src{mid}"
    src.mkdir()
    records = []
    for seq, name in enumerate(("a.bin", "b.bin"), 1):
        data = os.urandom(TWO_FILES)
        (src / name).write_bytes(data)
        records.append(
            JournalRecord(
                seq=seq,
                op="write",
                path=name,
                entry=Entry(
                    path=name, kind="f", size=TWO_FILES, hash=xxhash.xxh3_128(data).digest()
                ),
            )
        )
    root = disk / f"m{mid}"
    root.mkdir()
    folder = TargetFolder(
        mapping_id=mid,
        source_node="src",
        root=root,
        manifest=Manifest(tmp_path / f"m{mid}.db"),
        durable=False,
    )
    return src, records, folder


def _sent_now(src: Path, records: list[JournalRecord], folder: TargetFolder) -> list[AnyMessage]:
    options = ops.SendOptions(resume={(p.path, p.hash): p.size for p in folder.list_partials()})
    msgs = [
        m
        for r in records
        for m in ops.record_messages(src, r, options)
        if not isinstance(m, ops.Flush)
    ]
    return [*msgs, Checkpoint(seq=len(records))]


def test_two_mappings_filling_one_disk_do_not_both_stall_for_ever(
    tmp_path: Path, disk_40m: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # any hold has expired
    monkeypatch.setattr(target_folder, "FULL_DISK_HOLD_S", 0.0)
    maps = [_disk_mapping(tmp_path, disk_40m, mid) for mid in (1, 2)]
    # Both sessions run at once: each has its a.bin verified and staged, and 2 MiB of b.bin.
    sessions, rests = [], []
    for src, records, folder in maps:
        msgs = _sent_now(src, records, folder)
        b_start = next(
            i for i, m in enumerate(msgs) if isinstance(m, FileStart) and m.path == "b.bin"
        )
        session = ReceiverSession(folder, "j", lambda *_: None)
        assert session.apply_batch(msgs[: b_start + 3]) == []
        sessions.append(session)
        rests.append(msgs[b_start + 3 :])
    for session, rest in zip(sessions, rests, strict=True):  # the disk fills during both b.bin
        session.apply_batch(rest)
        session.close()
    committed: dict[int, bool] = {}
    for _round in range(
        8
    ):  # each source retries in turn (its backoff), one session after the other
        if any(all((f.root / n).exists() for n in ("a.bin", "b.bin")) for _s, _r, f in maps):
            break  # one mapping's batch is committed: the disk holds it (the other waits for space, rightly)
        for src, records, folder in maps:
            session = ReceiverSession(folder, "j", lambda *_: None)
            replies = session.apply_batch(_sent_now(src, records, folder))
            session.close()
            committed[folder.mapping_id] = replies == [
                Ack(mapping_id=folder.mapping_id, watermark=2)
            ]
        if any(committed.values()):
            break
    held = sorted((p.name[:24], p.stat().st_size // CHUNK_BYTES) for p in disk_40m.rglob("*.part"))
    done = [
        f.mapping_id for _s, _r, f in maps if all((f.root / n).exists() for n in ("a.bin", "b.bin"))
    ]
    assert done, f"neither mapping ever commits; partials on the disk (MiB): {held}"


# A target agent that is not root, in a forked process (uid nobody).
NOBODY = 65534


def _nobody_agent_step(base: Path, kill_in_fsync: bool) -> None:
    """One session of a non-root target agent against the source's retry (in a forked process)."""
    src, root = base / "src", base / "root"
    folder = TargetFolder(
        mapping_id=1,
        source_node="src",
        root=root,
        manifest=Manifest(base / "state" / "m.db"),
        durable=True,
    )
    data = (src / "big.bin").read_bytes()
    record = JournalRecord(
        seq=1,
        op="write",
        path="big.bin",
        entry=Entry(path="big.bin", kind="f", size=len(data), hash=xxhash.xxh3_128(data).digest()),
    )
    options = ops.SendOptions(resume={(p.path, p.hash): p.size for p in folder.list_partials()})
    msgs = [m for m in ops.record_messages(src, record, options) if not isinstance(m, ops.Flush)]
    session = ReceiverSession(folder, "j", lambda *_: None)
    if kill_in_fsync:
        os.fsync = lambda fd: os._exit(9)  # kill -9 while the commit fsyncs the staged files
    replies = session.apply_batch([*msgs, Checkpoint(seq=1)])
    session.close()
    (base / "replies").write_text(repr(replies))


def _as_nobody(base: Path, kill_in_fsync: bool) -> tuple[int, str]:
    """Run one agent session as uid nobody in a forked child; its exit code and replies. The
    child never returns into pytest, whatever happens in it, and is killed if it hangs."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            _nobody_agent_step(base, kill_in_fsync)
            code = 0
        except BaseException as exc:
            with contextlib.suppress(BaseException):
                (base / "replies").write_text(f"crash {exc!r}")
        finally:
            os._exit(code)
    deadline = time.monotonic() + 60
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the agent session as uid nobody did not end within 60 s")
        time.sleep(0.02)
    r = base / "replies"
    return os.waitstatus_to_exitcode(done[1]), r.read_text() if r.exists() else ""


@pytest.fixture
def nobody_dir() -> Iterator[Path]:
    """A directory uid nobody can reach (pytest's base temp dir is root's alone)."""
    base = Path(tempfile.mkdtemp(prefix="relaysync-nobody-"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def test_a_read_only_file_killed_mid_commit_still_arrives(nobody_dir: Path) -> None:
    """kill -9 while a commit fsyncs (safe durability), after it gave the staged partial of a
    read-only file its own mode 0444: a target agent that is not root must still resume it."""
    base = nobody_dir / "agent"
    for d in ("src", "root", "state"):
        (base / d).mkdir(parents=True)
    (base / "src" / "big.bin").write_bytes(os.urandom(9 * 1024 * 1024))  # over RESUME_MIN_BYTES
    os.chmod(base / "src" / "big.bin", 0o444)
    for path in (base, *base.rglob("*")):
        os.chown(path, NOBODY, NOBODY)
    rc, replies = _as_nobody(base, kill_in_fsync=True)
    assert rc == 9, replies
    part = next(p for p in (base / "root").iterdir() if p.name.endswith(".part"))
    retries = [_as_nobody(base, kill_in_fsync=False) for _ in range(3)]
    assert (base / "root" / "big.bin").exists(), (
        f"never committed after 3 retries; partial mode {oct(part.stat().st_mode & 0o777)}; last: {retries[-1]}"
    )


def test_a_checkpoint_naming_a_partial_obsolete_removes_only_that_version(tmp_path: Path) -> None:
    """The Checkpoint closing a comparison names partials whose version the source will never
    send; one the target has since started again of another version stays."""
    folder = _folder(tmp_path)
    old, newer, other = os.urandom(BIG), os.urandom(BIG), os.urandom(BIG)
    _interrupted(folder, "a.bin", old)
    held = {p.path: p.hash for p in folder.list_partials()}
    session = ReceiverSession(folder, "j", lambda *_: None)
    session.apply_batch([_start(1, "b.bin", other), *_chunks(1, other, 0, CHUNK_BYTES)])
    session.close()
    held["b.bin"] = xxhash.xxh3_128(other).digest()
    session = ReceiverSession(
        folder, "j", lambda *_: None
    )  # a newer version of a.bin starts meanwhile
    session.apply_batch([_start(2, "a.bin", newer), *_chunks(2, newer, 0, CHUNK_BYTES)])
    session.close()
    refs = (
        PartialRef(path="a.bin", hash=held["a.bin"]),
        PartialRef(path="b.bin", hash=held["b.bin"]),
        PartialRef(path="never.bin", hash=b"\x03" * 16),
    )
    session = ReceiverSession(folder, "j", lambda *_: None)
    assert session.apply_batch([Checkpoint(seq=3, obsolete=refs)]) == [
        Ack(mapping_id=1, watermark=3)
    ]
    session.close()
    assert [(p.path, p.hash) for p in folder.list_partials()] == [
        ("a.bin", xxhash.xxh3_128(newer).digest())
    ]
    assert len(_temps(folder.root)) == 1


def test_a_fresh_start_over_an_old_partial_is_a_new_file_not_a_truncate_to_zero(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On ext4 a file truncated to 0 writes all its new data back when it is closed
    (auto_da_alloc): measured, 0.55 s per GiB at every large commit. A start at offset 0 over a
    leftover partial takes a new file; a resume cuts only what is past its offset."""
    root = tmp_path / "root"
    root.mkdir()
    final = root / "big.bin"
    digest = b"\x01" * 16
    truncated: list[int] = []
    real_ftruncate = os.ftruncate
    monkeypatch.setattr(
        staging.os, "ftruncate", lambda fd, n: (truncated.append(n), real_ftruncate(fd, n))[1]
    )
    kw = {"owner": 1, "size": 3 * CHUNK_BYTES, "mode": 0o644, "mtime_ns": MTIME}

    fresh = open_partial(root, final, digest, offset=0, **kw)
    fresh.append(b"a" * CHUNK_BYTES + b"b" * 100)
    fresh.keep(CHUNK_BYTES + 100)  # a torn chunk's bytes past the whole chunk stay for now
    old = os.open(fresh.temp_name, os.O_RDONLY)  # held open: its inode number cannot be reused
    try:
        again = open_partial(root, final, digest, offset=0, **kw)
        assert os.fstat(again.fd).st_size == 0 and again.received == 0
        assert os.fstat(again.fd).st_ino != os.fstat(old).st_ino
        assert os.pread(old, CHUNK_BYTES + 100, 0) == b"a" * CHUNK_BYTES + b"b" * 100
    finally:
        os.close(old)
    assert 0 not in truncated
    again.append(b"c" * CHUNK_BYTES + b"d" * 100)
    again.keep(CHUNK_BYTES + 100)

    resumed = open_partial(root, final, digest, offset=CHUNK_BYTES, **kw)
    assert truncated[-1] == CHUNK_BYTES  # only the torn bytes go
    assert resumed.received == CHUNK_BYTES and os.fstat(resumed.fd).st_size == CHUNK_BYTES
    assert resumed.hasher.digest() == xxhash.xxh3_128_digest(b"c" * CHUNK_BYTES)
    resumed.discard()
    assert 0 not in truncated


def test_a_fifo_planted_under_a_partials_name_is_replaced_not_written_into(
    tmp_path: Path,
) -> None:
    """Whoever can write into the target folder could put a FIFO where a partial will be opened:
    writing into it would block the receiver for ever. It is replaced by a new regular file."""
    root = tmp_path / "root"
    root.mkdir()
    final = root / "big.bin"
    digest = b"\x02" * 16
    os.mkfifo(staging.partial_name_for(final, digest, 1))
    incoming = open_partial(
        root, final, digest, offset=0, owner=1, size=CHUNK_BYTES, mode=0o644, mtime_ns=MTIME
    )
    try:
        assert stat.S_ISREG(os.fstat(incoming.fd).st_mode)
        incoming.append(b"x" * CHUNK_BYTES)  # would block on a FIFO with no reader
    finally:
        incoming.discard()


def test_received_data_reaches_the_file_in_small_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1 MiB writes made the kernel take large page-cache folios that this VM's hypervisor faults
    in again (1.0-2.9 s of system time per GiB against 0.5-0.7 s): the receiver writes in
    WRITE_PIECE_BYTES, and every byte still lands in order."""
    sizes: list[int] = []
    real_write = os.write
    monkeypatch.setattr(
        staging.os, "write", lambda fd, b: (sizes.append(len(b)), real_write(fd, b))[1]
    )
    data = os.urandom(CHUNK_BYTES + 12345)
    incoming = open_temp(tmp_path, tmp_path / "f.bin", size=len(data), mode=0o644, mtime_ns=MTIME)
    incoming.append(data[:CHUNK_BYTES])
    incoming.append(memoryview(data)[CHUNK_BYTES:])
    incoming.finish(xxhash.xxh3_128_digest(data))
    incoming.close()
    assert max(sizes) <= staging.WRITE_PIECE_BYTES < CHUNK_BYTES
    assert Path(incoming.temp_name).read_bytes() == data
    os.unlink(incoming.temp_name)


def test_a_session_whose_partial_was_taken_over_commits_nothing(tmp_path: Path) -> None:
    """A session that outlived its link still holds its partial open when a new file is put
    under the same name (the partial's lock keeps a successor session out: this is a writer that
    ignores it). Its commit must not rename that half-written file into place: it fails, and
    the other file stays."""
    root = tmp_path / "root"
    root.mkdir()
    final = root / "big.bin"
    digest = xxhash.xxh3_128_digest(b"o" * CHUNK_BYTES)
    kw = {"owner": 1, "size": CHUNK_BYTES, "mode": 0o644, "mtime_ns": MTIME}
    old = open_partial(root, final, digest, offset=0, **kw)
    old.append(b"o" * CHUNK_BYTES)
    old.finish(digest)
    other = root / "other"
    other.write_bytes(b"n" * 100)  # half-written
    os.replace(other, old.temp_name)
    batch = staging.CommitBatch(durable=False)
    batch.add(old)
    with pytest.raises(staging.TransferError, match="another session"):
        batch.commit()
    assert not final.exists()
    assert Path(old.temp_name).read_bytes() == b"n" * 100


def test_a_commit_whose_temp_file_is_gone_leaves_a_directory_at_its_name_alone(
    tmp_path: Path,
) -> None:
    """A directory in the way of a file is removed so the file can take its place, but only
    when there is a file to take it: a partial removed meanwhile (by another session) used to
    cost the directory and everything in it, and the rename failed anyway."""
    root = tmp_path / "root"
    root.mkdir()
    final = root / "big.bin"
    digest = xxhash.xxh3_128_digest(b"o" * CHUNK_BYTES)
    mine = open_partial(
        root, final, digest, offset=0, owner=1, size=CHUNK_BYTES, mode=0o644, mtime_ns=MTIME
    )
    mine.append(b"o" * CHUNK_BYTES)
    mine.finish(digest)
    os.unlink(mine.temp_name)
    final.mkdir()
    (final / "kept.txt").write_text("someone's file")
    batch = staging.CommitBatch(durable=False)
    batch.add(mine)
    with pytest.raises(FileNotFoundError):
        batch.commit()
    assert (final / "kept.txt").read_text() == "someone's file"


def _open_below(root: Path) -> list[str]:
    """The files this process holds open below `root`."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(FileNotFoundError):
            if (target := os.readlink(f"/proc/self/fd/{fd}")).startswith(f"{root}/"):
                found.append(target)
    return found


def test_a_partial_whose_state_write_fails_is_not_left_open(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The partial is opened, then listed in the folder's state: a failed state write (a locked
    or full manifest) left its descriptor open for the life of the process."""
    folder = _folder(tmp_path)
    data = os.urandom(BIG)

    def failing(*_: object, **__: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(folder, "add_partial", failing)
    session = ReceiverSession(folder, "j", lambda *_: None)
    replies = session.apply_batch([_start(1, "big.bin", data)])
    assert replies and isinstance(replies[0], Error)
    assert _open_below(folder.root) == []
    session.close()
    assert _open_below(folder.root) == []
