"""A relay's spool on a full disk (review R, SHOULD-FIX 2): a failed append leaves no bytes past
the spool's recorded end, it is told as DISK_FULL, and once there is space the parent's resend
is read back by a child whole. Before the fix, the torn part of the batch stayed in the
segment, the resend landed after it, and every child read failed (undecodable frame) until the
relay restarted."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaysync.protocol.messages import (
    AnyMessage,
    Checkpoint,
    Error,
    ErrorCode,
    FileChunk,
    FileEnd,
    FileStart,
)
from relaysync.transfer._failures import TransientFailure
from relaysync.transfer.relay_feed import RelayFeed
from relaysync.transfer.spool import Spool
from relaysync.transfer.target_folder import TargetFolder
from relaysync.watch.manifest import Manifest
from tests._tmpfs import mount_tmpfs, unmounted_at_exit
from tests.unit.transfer.test_spool import _read_all

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounts a tmpfs (root only)")

CHUNK_BYTES = 64 * 1024


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    """A 1 MiB file system of its own for the spool."""
    where = tmp_path / "disk"
    with unmounted_at_exit(where):
        mount_tmpfs(where, "1m")
        yield where


def _file(seq: int, size: int) -> list[AnyMessage]:
    data = os.urandom(size)
    chunks = [
        FileChunk(seq=seq, offset=o, data=data[o : o + CHUNK_BYTES])
        for o in range(0, size, CHUNK_BYTES)
    ]
    digest = hashlib.blake2b(data, digest_size=16).digest()
    start = FileStart(seq=seq, path=f"f{seq}", size=size, mode=0o644, mtime_ns=0)
    return [start, *chunks, FileEnd(seq=seq, hash=digest), Checkpoint(seq=seq)]


def _fill(disk: Path, leave: int) -> Path:
    """Take all but `leave` bytes of the disk's free space."""
    st = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * (st.f_bavail * st.f_frsize - leave))
    return filler


def _segment_bytes(spool: Spool) -> int:
    return sum(p.stat().st_size for p in spool.directory.glob("*.spool"))


def test_a_batch_the_full_disk_cut_is_read_whole_after_the_resend(disk: Path) -> None:
    spool = Spool(disk / "spool")
    spool.begin("j", 0)
    first, second = _file(1, 100_000), _file(2, 400_000)
    spool.append(first)
    filler = _fill(disk, 150_000)  # part of the second file fits: ENOSPC mid-write
    with pytest.raises(TransientFailure) as failed:
        spool.append(second)
    assert failed.value.code == ErrorCode.DISK_FULL
    assert failed.value.detail == (
        f"relay spool {spool.directory}: disk full; free space on that file system"
    )
    assert _segment_bytes(spool) == spool.end - spool.start  # nothing past the recorded end
    spool.cut_unfinished()  # the parent's session ends
    filler.unlink()  # space is back; the parent reconnects and resends
    spool.begin("j", 1)
    spool.append(second)
    assert _read_all(spool) == first + second


def test_the_relay_answers_its_parent_disk_full(disk: Path, tmp_path: Path) -> None:
    """What the relay's peer server sends its parent for a batch its spool could not take."""
    (tmp_path / "root").mkdir()
    folder = TargetFolder(
        mapping_id=1,
        source_node="s" * 64,
        root=tmp_path / "root",
        manifest=Manifest(tmp_path / "relay.db"),
        durable=False,
    )
    try:
        feed = RelayFeed(folder, Spool(disk / "spool"))
        feed.spool.begin("j", 0)
        filler = _fill(disk, 150_000)
        refused = feed.spool_batch(_file(1, 400_000))
        assert isinstance(refused, Error) and refused.code == ErrorCode.DISK_FULL
        assert "disk full" in refused.detail and refused.seq == 1
        filler.unlink()
        assert feed.spool_batch(_file(1, 400_000)) is None
    finally:
        folder.manifest.close()
