"""A link sends a small file as the source read it to hash (watch/content_cache.py), without
opening it again: the bytes are the journaled version by construction. Another version, a file
too large to keep, or a link that was not counted reads the disk as before."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relaysync.constants import SMALL_FILE_BYTES
from relaysync.protocol.messages import FileStart, SmallFile
from relaysync.transfer import ops as ops_module
from relaysync.transfer.ops import SendOptions, record_messages
from relaysync.watch._fsevent import FsEvent
from relaysync.watch.changes import JournalRecord, PendingChange
from relaysync.watch.content_cache import ContentCache, MappingContent
from relaysync.watch.filters import PathFilter
from relaysync.watch.manifest import Manifest
from relaysync.watch.recorder import ChangeRecorder
from relaysync.watch.scanner import entry_from_stat, scan


@pytest.fixture
def opened(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths the send opened on disk."""
    paths: list[str] = []
    real = ops_module.open_source

    def counting(root: Path, path: str) -> tuple[int, os.stat_result] | None:
        paths.append(path)
        return real(root, path)

    monkeypatch.setattr(ops_module, "open_source", counting)
    return paths


def _records(changes: list[PendingChange]) -> list[JournalRecord]:
    return [
        JournalRecord(seq=i, op=c.op, path=c.path, entry=c.entry)
        for i, c in enumerate(changes, 1)
        if c.op == "write"
    ]


def _send(root: Path, records: list[JournalRecord], content: MappingContent) -> list[object]:
    options = SendOptions(small_files=True, content=content)
    return [m for r in records for m in record_messages(root, r, options)]


def _tree(tmp_path: Path) -> Path:
    root = tmp_path / "src"
    (root / "d").mkdir(parents=True)
    (root / "d" / "a.txt").write_bytes(b"a" * 4096)
    (root / "b.bin").write_bytes(os.urandom(1000))
    os.chmod(root / "b.bin", 0o640)
    return root


def test_a_scanned_small_file_is_sent_as_read_to_hash_without_opening_it(
    small_read: str, tmp_path: Path, manifest: Manifest, opened: list[str]
) -> None:
    root = _tree(tmp_path)
    content = MappingContent(ContentCache(), 1, lambda: 1)
    records = _records(scan(root, manifest, PathFilter(), cache=content).out)
    sent = _send(root, records, content)
    assert opened == []
    files = {m.path: m for m in sent if isinstance(m, SmallFile)}
    assert files["d/a.txt"].data == b"a" * 4096
    st = os.lstat(root / "b.bin")
    assert (files["b.bin"].mode, files["b.bin"].mtime_ns) == (0o640, st.st_mtime_ns)
    assert all(m.hash == r.entry.hash for r in records for m in [files[r.path]] if r.entry)


def test_the_journaled_version_is_sent_even_if_the_file_changed_since(
    tmp_path: Path, manifest: Manifest, opened: list[str]
) -> None:
    """What the record journaled goes, not what is on disk now (its own record follows)."""
    root = _tree(tmp_path)
    content = MappingContent(ContentCache(), 1, lambda: 1)
    records = _records(scan(root, manifest, PathFilter(), subdir="d", cache=content).out)
    (root / "d" / "a.txt").write_bytes(b"changed")
    (sent,) = [m for m in _send(root, records, content) if isinstance(m, SmallFile)]
    assert (sent.path, sent.data, opened) == ("d/a.txt", b"a" * 4096, [])


def test_each_link_takes_it_once_and_a_link_more_reads_the_disk(
    tmp_path: Path, manifest: Manifest, opened: list[str]
) -> None:
    root = _tree(tmp_path)
    content = MappingContent(ContentCache(), 1, lambda: 2)
    records = _records(scan(root, manifest, PathFilter(), subdir="d", cache=content).out)
    first, second, third = (_send(root, records, content) for _ in range(3))
    assert first == second == third  # the same message, from memory or from the disk
    assert opened == ["d/a.txt"]  # only the third link read it


def test_a_file_above_the_small_file_limit_is_read_when_sent(
    tmp_path: Path, manifest: Manifest, opened: list[str]
) -> None:
    root = tmp_path / "src"
    root.mkdir()
    (root / "big").write_bytes(b"x" * (SMALL_FILE_BYTES + 1))
    content = MappingContent(ContentCache(), 1, lambda: 1)
    records = _records(scan(root, manifest, PathFilter(), cache=content).out)
    sent = _send(root, records, content)
    assert isinstance(sent[0], FileStart) and opened == ["big"]


def test_a_written_file_the_recorder_hashed_is_kept_too(
    tmp_path: Path, manifest: Manifest, opened: list[str]
) -> None:
    """A close-write's hash (not only a scan's) keeps the bytes: the realtime path."""
    root = _tree(tmp_path)
    content = MappingContent(ContentCache(), 1, lambda: 1)
    recorder = ChangeRecorder(root, manifest, PathFilter(), cache=content)
    detection = recorder.detect([FsEvent(kind="write", path="b.bin")])
    records = _records(list(detection.changes))
    assert [r.path for r in records] == ["b.bin"]
    assert _send(root, records, content) and opened == []


def test_a_file_replaced_after_its_listing_is_not_kept_under_the_listed_stat(
    tmp_path: Path, manifest: Manifest, opened: list[str], small_read: str
) -> None:
    """A same-size file renamed over the listed one between its lstat and its read (a secret
    rotated from 0644 to 0600): kept, its bytes went with the old file's mode and mtime."""
    root = tmp_path / "src"
    root.mkdir()
    (root / "token").write_bytes(b"public-0")
    listed = os.lstat(root / "token")
    (root / "new").write_bytes(b"SECRET-1")
    os.chmod(root / "new", 0o600)
    os.rename(root / "new", root / "token")
    content = MappingContent(ContentCache(), 1, lambda: 1)
    entry = entry_from_stat(root, "token", listed, dir_fd=None, cache=content)
    assert entry is not None
    assert content.take("token", entry.hash) is None  # read from disk when sent, as it is
    record = JournalRecord(seq=1, op="write", path="token", entry=entry)
    (sent,) = _send(root, [record], content)
    assert isinstance(sent, SmallFile) and sent.mode == 0o600 and opened == ["token"]


def test_an_excluded_files_content_is_not_kept(tmp_path: Path, manifest: Manifest) -> None:
    """Never sent, it only held the budget (review)."""
    root = tmp_path / "src"
    root.mkdir()
    (root / "x.tmp").write_bytes(b"t" * 4000)
    cache = ContentCache()
    content = MappingContent(cache, 1, lambda: 1)
    recorder = ChangeRecorder(root, manifest, PathFilter(exclude=[r"\.tmp$"]), cache=content)
    recorder.detect([FsEvent(kind="write", path="x.tmp")])
    assert cache.size_bytes == 0
