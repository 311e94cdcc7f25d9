"""One writer per partial: a successor session waits for the one before to let go of a large
file's partial and resumes it (never a second copy beside it), and the directories made for a
partial go with it."""

from __future__ import annotations

import errno
import logging
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash

from relaysync.constants import CHUNK_BYTES, TEMP_PREFIX
from relaysync.protocol.messages import (
    Ack,
    AnyMessage,
    Checkpoint,
    Delete,
    FileAbort,
    FileChunk,
    FileEnd,
    FileStart,
    MakeDir,
    PartialRef,
    SmallFile,
)
from relaysync.transfer import _partial_lock, staging
from relaysync.transfer.receiver import ReceiverSession
from relaysync.transfer.target_folder import TargetFolder
from relaysync.watch.manifest import Manifest
from tests.unit.transfer._target_helpers import held_dirs, open_partial

_held_dirs = pytest.fixture(autouse=True)(held_dirs)

SIZE = 12 * CHUNK_BYTES  # large enough for a named, resumable partial
MTIME = 1_700_000_000_000_000_000
WAIT_S = 30.0  # generous bound for a condition polled from the test


@pytest.fixture
def short_wait(monkeypatch: pytest.MonkeyPatch) -> None:
    """A refused second writer gives up at once instead of after PARTIAL_BUSY_WAIT_S."""
    monkeypatch.setattr(_partial_lock, "PARTIAL_BUSY_WAIT_S", 0.2)


def _start(path: str, data: bytes, offset: int = 0, seq: int = 1) -> FileStart:
    return FileStart(
        seq=seq,
        path=path,
        size=len(data),
        mode=0o644,
        mtime_ns=MTIME,
        expected_hash=xxhash.xxh3_128_digest(data),
        offset=offset,
    )


def _chunks(data: bytes, lo: int, hi: int, seq: int = 1) -> list[AnyMessage]:
    return [
        FileChunk(seq=seq, offset=o, data=data[o : o + CHUNK_BYTES])
        for o in range(lo, hi, CHUNK_BYTES)
    ]


def _rest(path: str, data: bytes, offset: int, seq: int = 1) -> list[AnyMessage]:
    return [
        _start(path, data, offset, seq),
        *_chunks(data, offset, len(data), seq),
        FileEnd(seq=seq, hash=xxhash.xxh3_128_digest(data)),
        Checkpoint(seq=seq),
    ]


def _temps(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.name.startswith(TEMP_PREFIX))


def _deleted_open_below(root: Path) -> list[str]:
    """Files this process holds open below `root` that no name leads to any more (their space
    is taken until they are closed)."""
    found = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:
            continue
        if target.startswith(f"{root}/") and target.endswith(" (deleted)"):
            found.append(target)
    return found


def test_two_writers_cannot_hold_the_same_partial(tmp_path: Path, short_wait: None) -> None:
    final = tmp_path / "big.bin"
    digest = b"\x07" * 16
    kw = {"owner": 1, "size": 4 * CHUNK_BYTES, "mode": 0o644, "mtime_ns": MTIME}
    first = open_partial(tmp_path, final, digest, offset=0, **kw)
    first.append(b"a" * 2 * CHUNK_BYTES)
    for offset in (0, CHUNK_BYTES):  # neither afresh nor as a resume
        with pytest.raises(BlockingIOError):
            open_partial(tmp_path, final, digest, offset=offset, **kw)
    assert os.path.samestat(os.fstat(first.fd), os.lstat(first.temp_name))  # still its file
    assert os.fstat(first.fd).st_size == 2 * CHUNK_BYTES
    first.keep(2 * CHUNK_BYTES)  # lets go
    second = open_partial(tmp_path, final, digest, offset=2 * CHUNK_BYTES, **kw)
    assert second.received == 2 * CHUNK_BYTES
    with pytest.raises(BlockingIOError):  # and now the second one holds it
        open_partial(tmp_path, final, digest, offset=0, **kw)
    second.discard()
    assert _temps(tmp_path) == []


def test_a_file_system_that_cannot_lock_still_takes_partials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Some file systems (FUSE ones) refuse flock: large files must still arrive there."""

    def no_locks(fd: int, op: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(_partial_lock.fcntl, "flock", no_locks)
    incoming = open_partial(
        tmp_path,
        tmp_path / "big.bin",
        b"\x09" * 16,
        offset=0,
        owner=1,
        size=1,
        mode=0o644,
        mtime_ns=MTIME,
    )
    incoming.discard()
    assert _temps(tmp_path) == []


def test_a_partial_removed_by_its_holder_is_started_afresh_not_taken_over(
    tmp_path: Path,
) -> None:
    """The holder removes its partial (a hash mismatch, an abort) before it lets go: a writer
    that opened the old file meanwhile must not write into a file no name leads to."""
    final = tmp_path / "big.bin"
    digest = b"\x08" * 16
    kw = {"owner": 1, "size": CHUNK_BYTES, "mode": 0o644, "mtime_ns": MTIME}
    first = open_partial(tmp_path, final, digest, offset=0, **kw)
    first.append(b"a" * 100)
    got: list[staging.IncomingFile] = []
    waiter = threading.Thread(
        target=lambda: got.append(open_partial(tmp_path, final, digest, offset=0, **kw))
    )
    waiter.start()
    first.discard()
    waiter.join(WAIT_S)
    assert got, "the second writer did not get the partial"
    assert os.path.samestat(os.fstat(got[0].fd), os.lstat(got[0].temp_name))
    got[0].discard()


@pytest.fixture
def lock_log(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    with caplog.at_level(logging.INFO, logger=_partial_lock.__name__):
        yield caplog


def _waiting(log: pytest.LogCaptureFixture, done: threading.Thread) -> None:
    """Poll until the successor waits for the partial's lock, or has finished (the old code)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        if not done.is_alive() or any("waiting for" in r.getMessage() for r in log.records):
            return
        time.sleep(0.02)


@pytest.mark.parametrize("resume", [True, False], ids=["resumed", "started afresh"])
def test_a_successor_waits_for_the_session_before_and_resumes_its_partial(
    folder: TargetFolder, lock_log: pytest.LogCaptureFixture, resume: bool
) -> None:
    """A link restarted mid-file: the new session starts while the old one still holds the
    large file's partial. The new one waits until the old one lets go, and (resumed) sends
    only what the old one had not received; at no moment are there two copies on disk. Before
    the lock the successor went ahead at once: afresh, it put a new file under the name while
    the old one's file, removed but open, kept its space (on a 20 MiB disk, the 12 MiB file
    failed DISK_FULL until the old session let go)."""
    data = os.urandom(SIZE)
    old = ReceiverSession(folder, "j", lambda *_: None)
    assert old.apply_batch([_start("big.bin", data), *_chunks(data, 0, 5 * CHUNK_BYTES)]) == []
    listed = [p.size for p in folder.list_partials()]  # what the successor's MappingState says
    assert listed == [5 * CHUNK_BYTES]
    offset = listed[0] if resume else 0
    new = ReceiverSession(folder, "j", lambda *_: None)
    replies: list[AnyMessage] = []
    successor = threading.Thread(
        target=lambda: replies.extend(new.apply_batch(_rest("big.bin", data, offset)))
    )
    successor.start()
    try:
        _waiting(lock_log, successor)
        assert successor.is_alive(), f"the successor went ahead beside the old session: {replies}"
        assert len(_temps(folder.root)) == 1 and _deleted_open_below(folder.root) == []
    finally:
        old.close()  # the old session's end (`_receive`'s finally): it lets go
        successor.join(WAIT_S)
    assert not successor.is_alive()
    new.close()
    assert replies == [Ack(mapping_id=1, watermark=1)]
    assert (folder.root / "big.bin").read_bytes() == data
    assert _temps(folder.root) == [] and folder.list_partials() == ()
    assert _deleted_open_below(folder.root) == []
    sent = sum(len(m.data) for m in _rest("big.bin", data, offset) if isinstance(m, FileChunk))
    assert sent <= SIZE - listed[0] + CHUNK_BYTES if resume else sent == SIZE


def _partial_in(folder: TargetFolder, path: str, data: bytes) -> None:
    """A large file cut off after one chunk: its partial stays (opened where `path` says)."""
    session = ReceiverSession(folder, "j", lambda *_: None)
    assert session.apply_batch([_start(path, data), *_chunks(data, 0, CHUNK_BYTES)]) == []
    session.close()


def _obsolete(folder: TargetFolder, paths: list[str], data: bytes, seq: int) -> None:
    """The source says it will never send these versions (a comparison found them gone)."""
    refs = tuple(PartialRef(path=p, hash=xxhash.xxh3_128_digest(data)) for p in paths)
    session = ReceiverSession(folder, "j", lambda *_: None)
    assert session.apply_batch([Checkpoint(seq=seq, obsolete=refs)]) == [
        Ack(mapping_id=1, watermark=seq)
    ]
    session.close()


def test_the_directories_made_for_a_partial_go_with_it(folder: TargetFolder) -> None:
    """Directories the receiver created only to hold a partial are removed with it when they
    are empty; never one that was there before (an operator's), one the source made a
    directory of the tree (MakeDir), or one that holds anything else."""
    root = folder.root
    data = os.urandom(SIZE)
    (root / "ops").mkdir()  # the operator's
    for path in ("new/deep/big.bin", "ops/made/big.bin", "tree/big.bin", "busy/big.bin"):
        _partial_in(folder, path, data)
    session = ReceiverSession(folder, "j", lambda *_: None)
    assert session.apply_batch([MakeDir(seq=1, path="tree", mode=0o755), Checkpoint(seq=1)])
    session.close()
    (root / "busy" / "someone.txt").write_text("not ours")
    _obsolete(
        folder, ["new/deep/big.bin", "ops/made/big.bin", "tree/big.bin", "busy/big.bin"], data, 2
    )
    assert _temps(root) == []
    assert sorted(p.relative_to(root).as_posix() for p in root.rglob("*")) == [
        "busy",
        "busy/someone.txt",
        "ops",
        "tree",
    ]


def test_a_directory_that_received_its_file_stays_when_the_file_goes(folder: TargetFolder) -> None:
    """Once the file is committed its directory is the tree's: a later delete of the file (or
    anything else) never removes it as a partial's."""
    data = os.urandom(SIZE)
    _partial_in(folder, "got/big.bin", data)
    session = ReceiverSession(folder, "j", lambda *_: None)
    assert session.apply_batch(_rest("got/big.bin", data, CHUNK_BYTES)) == [
        Ack(mapping_id=1, watermark=1)
    ]
    assert session.apply_batch([Delete(seq=2, path="got/big.bin"), Checkpoint(seq=2)]) == [
        Ack(mapping_id=1, watermark=2)
    ]
    session.close()
    _obsolete(folder, ["got/big.bin"], data, 3)
    assert (folder.root / "got").is_dir() and not (folder.root / "got" / "big.bin").exists()


def test_a_file_in_a_directory_a_partial_took_away_goes_in_afresh(folder: TargetFolder) -> None:
    """Found in review: the partial's directory was removed, but the session's path cache still
    held it as proven real, so every later file in it failed (ENOENT) until the link restarted."""
    data = os.urandom(SIZE)
    _partial_in(folder, "d/big", data)
    session = ReceiverSession(folder, "j", lambda *_: None)
    resumed = [_start("d/big", data, CHUNK_BYTES), FileAbort(seq=1, reason="changed while read")]
    session.apply_batch(resumed)  # the resume proves "d"; the abort takes it away with the partial
    assert not (folder.root / "d").exists()
    body = b"<html></html>"
    small = SmallFile(
        seq=2,
        path="d/index.html",
        size=len(body),
        mode=0o644,
        mtime_ns=MTIME,
        data=body,
        hash=xxhash.xxh3_128_digest(body),
    )
    assert session.apply_batch([small, Checkpoint(seq=2)]) == [Ack(mapping_id=1, watermark=2)]
    session.close()
    assert (folder.root / "d" / "index.html").read_bytes() == body


def test_an_n_to_m_member_leaves_the_shared_roots_directories_alone(tmp_path: Path) -> None:
    """Found in review: a member's partial made `d`, another member's source then made `d` a
    directory of its tree (MakeDir), and the first member's cleanup removed it: each member
    knows its own manifest only, so in a shared root the partials' directories stay."""
    root = tmp_path / "root"
    root.mkdir()
    members = [
        TargetFolder(
            mapping_id=n,
            source_node=f"s{n}",
            root=root,
            manifest=Manifest(tmp_path / f"{n}.db"),
            durable=False,
            conflict="newest-mtime",
        )
        for n in (1, 2)
    ]
    members[1].lock, members[1].tree_changes = members[0].lock, members[0].tree_changes
    data = os.urandom(SIZE)
    _partial_in(members[0], "d/big", data)
    other = ReceiverSession(members[1], "j2", lambda *_: None)
    other.apply_batch([MakeDir(seq=1, path="d", mode=0o755), Checkpoint(seq=1)])
    other.close()
    _obsolete(members[0], ["d/big"], data, seq=2)
    assert (root / "d").is_dir()
