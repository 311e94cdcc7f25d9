"""Defects a review found in the target's descriptor-based partials, delta base, removal survey,
version keeper and restore (notes s24/tgtfd4-review.md): a restore that removed a directory in
its way, a delta and a removal survey that needed /proc (a container or chroot may not mount
it), and a delta base descriptor leaked when the manifest could not be read.

Without /proc is simulated in-process: every path under /proc is missing (ENOENT), as there,
both to Python's os functions and to librsync's fopen."""

from __future__ import annotations

import errno
import os
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import xxhash

from relaysync.constants import TEMP_PREFIX
from relaysync.errors import UnsafePath
from relaysync.protocol.messages import (
    Ack,
    AnyMessage,
    Checkpoint,
    CommitRecord,
    Delete,
    DeltaStart,
    Error,
    ErrorCode,
    MakeDir,
)
from relaysync.transfer import _file_receiver, _librsync
from relaysync.transfer.receiver import ReceiverSession
from relaysync.transfer.removal import RemovalSurvey
from relaysync.transfer.target_folder import TargetFolder
from relaysync.transfer.versions import VersionKeeper, versions_dir_for
from tests.unit.transfer._target_helpers import T0, delta_messages
from tests.unit.transfer._target_helpers import small_file as _small

needs_librsync = pytest.mark.skipif(not _librsync.available(), reason="librsync2 is not installed")


def _under_proc(path: object) -> bool:
    if isinstance(path, int) or not isinstance(path, str | bytes | os.PathLike):
        return False
    name = os.fsdecode(path)
    return name == "/proc" or name.startswith("/proc/")


def _refusing_proc(real: Callable[..., object]) -> Callable[..., object]:
    def call(*args: object, **kwargs: object) -> object:
        for path in args[:2]:  # os.link(src, dst); the others take their path first
            if _under_proc(path):
                raise FileNotFoundError(errno.ENOENT, "No such file or directory", path)
        return real(*args, **kwargs)

    return call


@pytest.fixture
def no_proc(monkeypatch: pytest.MonkeyPatch) -> None:
    """/proc as where it is not mounted: every path under it is missing."""
    for name in ("stat", "lstat", "open", "link", "readlink", "listdir", "scandir"):
        monkeypatch.setattr(os, name, _refusing_proc(getattr(os, name)))
    real_enter = _librsync._File.__enter__

    def enter(self: _librsync._File) -> int:  # libc fopen of a path
        if _under_proc(self.path):
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", str(self.path))
        return real_enter(self)

    monkeypatch.setattr(_librsync._File, "__enter__", enter)


@pytest.fixture
def records() -> list[CommitRecord]:
    return []


@pytest.fixture
def session(folder: TargetFolder, records: list[CommitRecord]) -> Iterator[ReceiverSession]:
    s = ReceiverSession(folder, "j", lambda _w, batch: records.extend(batch))
    yield s
    s.close()


def _applied(session: ReceiverSession, ops_: list[AnyMessage], last: int) -> None:
    assert session.apply_batch([*ops_, Checkpoint(seq=last)]) == [Ack(mapping_id=1, watermark=last)]


def _held_dir(path: Path) -> int:
    return os.open(path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)


# --- 1. restore ---


def test_a_restore_refuses_a_directory_in_its_way_and_removes_nothing(tmp_path: Path) -> None:
    """The old code renamed the restored file over `a/b` with staging.replace_at, which removes
    a directory in the way with all below it (kept as no version): a/b/sub/* were gone."""
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "b").write_bytes(b"old version")
    keeper = VersionKeeper(root, keep=3)
    a = _held_dir(root / "a")
    try:
        keeper.save(a, "b", "a/b")
    finally:
        os.close(a)
    (root / "a" / "b").unlink()
    (root / "a" / "b" / "sub").mkdir(parents=True)
    for i in range(3):
        (root / "a" / "b" / "sub" / f"f{i}").write_text("precious")
    with pytest.raises(UnsafePath, match="'a/b'.*a directory is there"):
        keeper.restore("a/b")
    assert sorted(os.listdir(root / "a" / "b" / "sub")) == ["f0", "f1", "f2"]
    assert (root / "a" / "b" / "sub" / "f0").read_text() == "precious"
    assert os.listdir(root / "a") == ["b"]  # no temp file left beside it
    assert len(keeper.versions("a/b")) == 1  # the version stays kept for a later restore


def test_a_restore_still_replaces_a_file(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "b").write_bytes(b"old version")
    keeper = VersionKeeper(root, keep=3)
    a = _held_dir(root / "a")
    try:
        keeper.save(a, "b", "a/b")
    finally:
        os.close(a)
    (root / "a" / "new").write_bytes(b"newer")
    os.replace(root / "a" / "new", root / "a" / "b")  # as a target replaces (the version is a link)
    keeper.restore("a/b")
    assert (root / "a" / "b").read_bytes() == b"old version"
    assert os.listdir(root / "a") == ["b"]


# --- 2. the delta base ---


@needs_librsync
def test_a_delta_is_applied_without_proc(
    tmp_path: Path, folder: TargetFolder, session: ReceiverSession, no_proc: None
) -> None:
    """The old code handed librsync /proc/self/fd/N as the base's path: without /proc, every
    delta failed with IO_ERROR, which the source does not answer with a whole file: the same
    delta came again after each reconnect, for ever. Now librsync reads a dup of the fd."""
    old = os.urandom(256 * 1024)
    new = old[:1000] + b"edited" + old[1006:]
    _applied(session, [MakeDir(seq=1, path="u", mode=0o755), _small(2, "u/f", old)], 2)
    replies = session.apply_batch([*delta_messages(tmp_path, old, new), Checkpoint(seq=3)])
    assert replies == [Ack(mapping_id=1, watermark=3)]
    assert (folder.root / "u" / "f").read_bytes() == new


@needs_librsync
def test_a_base_that_cannot_be_opened_has_the_whole_file_sent(
    tmp_path: Path,
    folder: TargetFolder,
    session: ReceiverSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The old code answered EACCES (EIO...) opening the base with IO_ERROR: retried as a delta
    for ever. BASE_MISMATCH has the source send the whole file, which needs no base."""
    old = os.urandom(256 * 1024)
    _applied(session, [MakeDir(seq=1, path="u", mode=0o755), _small(2, "u/f", old)], 2)

    def refused(*_args: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(_file_receiver, "open_regular_in", refused)
    (reply,) = session.apply_batch(
        [*delta_messages(tmp_path, old, old[:5000] + b"x" + old[5001:]), Checkpoint(seq=3)]
    )
    assert isinstance(reply, Error) and reply.seq == 3
    assert reply.code == ErrorCode.BASE_MISMATCH, reply
    assert (folder.root / "u" / "f").read_bytes() == old


@needs_librsync
def test_a_base_cut_short_while_patching_has_the_whole_file_sent(
    tmp_path: Path,
    folder: TargetFolder,
    session: ReceiverSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A base that librsync cannot read to where the delta copies from (a local user cut it
    after it was checked) is the base's fault, not the delta's: BASE_MISMATCH."""
    old = os.urandom(256 * 1024)
    new = old[:1000] + b"edited" + old[1006:]
    _applied(session, [MakeDir(seq=1, path="u", mode=0o755), _small(2, "u/f", old)], 2)
    real_open = _file_receiver.open_regular_in

    def open_then_cut(root: Path, relpath: str) -> object:
        opened = real_open(root, relpath)
        os.truncate(root / relpath, 10)
        return opened

    monkeypatch.setattr(_file_receiver, "open_regular_in", open_then_cut)
    (reply,) = session.apply_batch([*delta_messages(tmp_path, old, new), Checkpoint(seq=3)])
    assert isinstance(reply, Error) and reply.seq == 3
    assert reply.code == ErrorCode.BASE_MISMATCH, reply


# --- 3. the removal survey ---


def test_a_removed_link_to_a_directory_names_its_pages_without_proc(
    folder: TargetFolder,
    session: ReceiverSession,
    records: list[CommitRecord],
    no_proc: None,
) -> None:
    """The old survey resolved the link through /proc/self/fd/N/alias: without /proc it took
    the link for one to nothing (kind "l") and the purge record named none of the pages the
    web server serves under it."""
    _applied(session, [MakeDir(seq=1, path="real", mode=0o755), _small(2, "real/x.html", b"x")], 2)
    os.symlink("real", folder.root / "alias")
    survey = RemovalSurvey(root=folder.root)
    root_fd = _held_dir(folder.root)
    try:
        kind = survey.tree(root_fd, "alias", "alias", itself=False)
    finally:
        os.close(root_fd)
    assert (kind, survey.paths) == ("d", ["alias/x.html"])
    _applied(session, [MakeDir(seq=3, path="other", mode=0o755)], 3)
    os.symlink("../real", folder.root / "other" / "up")  # relative to the link's own directory
    _applied(session, [Delete(seq=4, path="other/up")], 4)
    (deleted,) = [r for r in records if r.seq == 4]
    assert (deleted.kind, deleted.removed) == ("d", ("other/up/x.html",))


def test_a_link_out_of_the_folder_is_a_directory_with_nothing_listed(
    tmp_path: Path, folder: TargetFolder, no_proc: None
) -> None:
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret-name").write_text("x")
    os.symlink(tmp_path / "outside", folder.root / "out")
    os.symlink("../outside", folder.root / "up")
    survey = RemovalSurvey(root=folder.root)
    root_fd = _held_dir(folder.root)
    try:
        kinds = [survey.tree(root_fd, n, n, itself=False) for n in ("out", "up")]
    finally:
        os.close(root_fd)
    assert (kinds, survey.paths) == (["d", "d"], [])


# --- 4. the delta base descriptor ---


def test_the_delta_base_is_not_left_open_when_the_manifest_fails(
    folder: TargetFolder, session: ReceiverSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old code opened the base, then read the manifest entry: when that raised (sqlite
    "database is locked", an I/O error) nothing closed the base: one fd per DeltaStart."""
    _applied(session, [_small(1, "f", b"hello")], 1)
    st = os.stat(folder.root / "f")
    opened: list[int] = []
    real_open = _file_receiver.open_regular_in

    def recording(root: Path, relpath: str) -> object:
        result = real_open(root, relpath)
        if result is not None:
            opened.append(result[0])
        return result

    def locked(_path: str) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(_file_receiver, "open_regular_in", recording)
    monkeypatch.setattr(folder.manifest, "get", locked)
    base_hash = xxhash.xxh3_128_digest(b"hello")
    start = DeltaStart(seq=2, path="f", size=6, mode=0o644, mtime_ns=T0, base_hash=base_hash)
    # a state failure is the source's to retry (transfer/_state_failures.py), not a crash
    [refused] = session.apply_batch([start])
    assert isinstance(refused, Error) and refused.code == ErrorCode.IO_ERROR
    assert refused.detail.startswith(f"target state {folder.manifest.path}: database is locked")
    assert not [fd for fd in opened if _open_on(fd, st)]  # now the manifest is read first


def _open_on(fd: int, st: os.stat_result) -> bool:
    """Whether `fd` is (still) open on the file of `st` (a closed number may be reused)."""
    try:
        fst = os.fstat(fd)
    except OSError:
        return False
    return (fst.st_dev, fst.st_ino) == (st.st_dev, st.st_ino)


# --- the version keeper ---


def test_a_version_is_a_hard_link_without_proc(tmp_path: Path, no_proc: None) -> None:
    """The keeper linked the open file through /proc/self/fd/N: without /proc every version was
    a full copy. It now links by name, never following a link, and checks what it linked."""
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "b").write_bytes(b"old version")
    keeper = VersionKeeper(root, keep=3)
    a = _held_dir(root / "a")
    try:
        keeper.save(a, "b", "a/b")
    finally:
        os.close(a)
    (kept,) = (versions_dir_for(root) / "a").iterdir()
    assert kept.read_bytes() == b"old version"
    assert kept.stat().st_ino == (root / "a" / "b").stat().st_ino


def test_a_name_swapped_for_a_link_is_not_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """save() found a regular file; by the time it is linked, a symlink to outside stands in
    its place: linked as itself, it is taken back, and nothing outside is read."""
    root = tmp_path / "root"
    (root / "a").mkdir(parents=True)
    (root / "a" / "b").write_bytes(b"mine")
    (tmp_path / "secret").write_bytes(b"secret")
    keeper = VersionKeeper(root, keep=3)
    real_link = os.link

    def swapped_first(*args: object, **kwargs: object) -> None:
        (root / "a" / "b").unlink()
        os.symlink(tmp_path / "secret", root / "a" / "b")
        real_link(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "link", swapped_first)
    a = _held_dir(root / "a")
    try:
        keeper.save(a, "b", "a/b")
    finally:
        os.close(a)
    assert list((versions_dir_for(root) / "a").iterdir()) == []
    assert not [n for n in os.listdir(root / "a") if n.startswith(TEMP_PREFIX)]
