"""A full disk where the target keeps its state (manifest.db under the agent's data directory)
while the served root has room (review D, SHOULD-FIX 2): the source is told DISK_FULL, naming the
manifest, instead of a session ended by a raw sqlite3 error; once there is space the retry
commits everything, the manifest matching the disk."""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import xxhash

from relaysync.protocol.messages import Ack, AnyMessage, Checkpoint, Delete, Error, ErrorCode
from relaysync.transfer._failures import TransientFailure
from relaysync.transfer._state_failures import state_writes
from relaysync.transfer.receiver import ReceiverSession
from relaysync.transfer.target_folder import TargetFolder
from relaysync.watch.manifest import Manifest
from tests._tmpfs import mount_tmpfs, unmounted_at_exit
from tests.unit.transfer._target_helpers import small_file as _small

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (root only)")


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """The agent's data directory on a small tmpfs of its own (the root is on tmp_path)."""
    where = tmp_path / "state"
    with unmounted_at_exit(where):
        mount_tmpfs(where, "512k")
        yield where


@pytest.fixture
def folder(tmp_path: Path, state: Path) -> Iterator[TargetFolder]:
    root = tmp_path / "root"
    root.mkdir()
    folder = TargetFolder(
        mapping_id=1,
        source_node="src",
        root=root,
        manifest=Manifest(state / "manifest.db"),
        durable=False,
    )
    try:
        yield folder
    finally:
        folder.manifest.close()  # before the unmount


def _apply(folder: TargetFolder, messages: list[AnyMessage]) -> list[AnyMessage]:
    """One session (one link) applying `messages`, as the agent's peer server runs it."""
    session = ReceiverSession(folder, "j", lambda *_: None)
    try:
        return session.apply_batch(messages)
    finally:
        session.close()


def _fill(state: Path) -> Path:
    filler = state / "filler"
    with open(filler, "wb") as out:
        with pytest.raises(OSError) as full:
            while True:
                out.write(b"\0" * 65536)
                out.flush()
        assert full.value.errno == errno.ENOSPC
    return filler


def _refused_for_full_state(replies: list[AnyMessage], folder: TargetFolder) -> None:
    assert len(replies) == 1 and isinstance(replies[0], Error), replies
    assert replies[0].code == ErrorCode.DISK_FULL
    assert replies[0].detail == (
        f"target state {folder.manifest.path}: disk full; free space on that file system"
    )


def test_a_full_state_disk_is_a_disk_full_refusal_and_the_retry_commits_all(
    folder: TargetFolder, state: Path
) -> None:
    """The old code raised sqlite3.OperationalError out of apply_batch (the manifest's COMMIT
    after the batch's renames): the peer server logged "failed unexpectedly", the source saw a
    dropped link and the master no reason."""
    assert _apply(folder, [_small(1, "warm", b"w"), Checkpoint(seq=1)]) == [
        Ack(mapping_id=1, watermark=1)
    ]
    batch: list[AnyMessage] = [_small(i, f"f{i:03d}", os.urandom(3000)) for i in range(2, 200)] + [
        Checkpoint(seq=199)
    ]
    filler = _fill(state)
    _refused_for_full_state(_apply(folder, batch), folder)
    assert folder.watermark("j") == 1  # the source sends the batch again
    filler.unlink()
    assert _apply(folder, batch) == [Ack(mapping_id=1, watermark=199)]
    assert folder.watermark("j") == 199
    for message in batch[:-1]:
        path = message.path  # type: ignore[union-attr]
        entry = folder.manifest.get(path)
        data = (folder.root / path).read_bytes()
        st = (folder.root / path).stat()
        assert entry is not None, path
        assert (entry.hash, entry.size, entry.mtime_ns) == (
            xxhash.xxh3_128_digest(data),
            st.st_size,
            st.st_mtime_ns,
        )


@pytest.mark.parametrize("op", ["delete", "watermark"])
def test_a_state_write_besides_a_batch_s_on_a_full_state_disk_is_a_disk_full_refusal(
    folder: TargetFolder, state: Path, op: str
) -> None:
    """A Delete's manifest write (through `_apply_all`), and the watermark alone (a Checkpoint
    past ops that wrote nothing, `_report_and_save`): each raised the raw sqlite3 error before."""
    files: list[AnyMessage] = [_small(i, f"d/f{i:03d}", b"x" * 100) for i in range(1, 60)]
    assert _apply(folder, [*files, Checkpoint(seq=59)]) == [Ack(mapping_id=1, watermark=59)]
    ops: list[AnyMessage] = [Delete(seq=60, path="d")] if op == "delete" else []
    filler = _fill(state)
    replies = _apply(folder, [*ops, Checkpoint(seq=60)])
    _refused_for_full_state(replies, folder)
    assert isinstance(replies[0], Error) and replies[0].seq == 60
    assert folder.watermark("j") == 59
    filler.unlink()
    assert _apply(folder, [*ops, Checkpoint(seq=60)]) == [Ack(mapping_id=1, watermark=60)]
    assert folder.watermark("j") == 60
    if ops:
        assert not (folder.root / "d").exists() and folder.manifest.get("d/f001") is None


def test_a_state_failure_other_than_a_full_disk_is_an_io_error(tmp_path: Path) -> None:
    """Not every SQLite failure is a full disk: a read-only state (SQLITE_READONLY) is IO_ERROR,
    named as such, for the source to retry."""
    db_path = tmp_path / "manifest.db"
    Manifest(db_path).close()
    db = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True)
    try:
        with pytest.raises(TransientFailure) as failed, state_writes(7, db_path):
            db.execute("INSERT INTO meta VALUES ('k', 'v')")
    finally:
        db.close()
    assert (failed.value.seq, failed.value.code) == (7, ErrorCode.IO_ERROR)
    assert failed.value.detail.startswith(f"target state {db_path}: attempt to write a readonly")
