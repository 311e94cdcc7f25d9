"""What a target reads, and the partials it keeps, stay inside its folder whatever a local user
swaps in for a directory: a large file's partial (made, resumed, given to a relay's child), the
base a delta is applied to, the removal survey (names reported for the purge), and the version
keeper (which would copy an outside file into `.versions`, for a restore to put in the tree).

Each test swaps a directory for a link to a directory outside the folder at the moment the old
code had checked the path and not yet opened it, and shows nothing outside is read, written or
copied: the op ends in a refusal or a skip, or acts in the real (moved) directory."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import xxhash

from relaysync.constants import CHUNK_BYTES
from relaysync.protocol.messages import (
    Ack,
    AnyMessage,
    Checkpoint,
    CommitRecord,
    Delete,
    Erase,
    Error,
    ErrorCode,
    FileChunk,
    FileEnd,
    FileStart,
    MakeDir,
)
from relaysync.transfer import _librsync, _partial_lock, relay_resume, staging
from relaysync.transfer.receiver import ReceiverSession
from relaysync.transfer.removal import RemovalSurvey
from relaysync.transfer.target_folder import RESUME_MIN_BYTES, TargetFolder
from relaysync.transfer.versions import versions_dir_for
from relaysync.watch.manifest import Manifest
from tests.unit.transfer._target_helpers import T0, delta_messages
from tests.unit.transfer._target_helpers import small_file as _small

BIG = RESUME_MIN_BYTES + CHUNK_BYTES  # a large file: it goes through a named partial


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    return path


@pytest.fixture
def records() -> list[CommitRecord]:
    return []


@pytest.fixture
def session(folder: TargetFolder, records: list[CommitRecord]) -> Iterator[ReceiverSession]:
    s = ReceiverSession(folder, "j", lambda _w, batch: records.extend(batch))
    yield s
    s.close()


def _swap_for_link(root: Path, name: str, outside: Path) -> None:
    """What a local user who can write in the tree does: the directory goes, a link takes its name."""
    os.rename(root / name, root / f"{name}.old")
    os.symlink(outside, root / name)


def _swapping_first(
    monkeypatch: pytest.MonkeyPatch,
    owner: object,
    attr: str,
    swap: Callable[[], None],
) -> None:
    """Make `owner.attr` run `swap` at its first call, then do what it does."""
    real = getattr(owner, attr)
    done: list[bool] = []

    def swapped_first(*args: object, **kwargs: object) -> object:
        if not done:
            done.append(True)
            swap()
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, attr, swapped_first)


def _applied(session: ReceiverSession, ops_: list[AnyMessage], last: int) -> None:
    assert session.apply_batch([*ops_, Checkpoint(seq=last)]) == [Ack(mapping_id=1, watermark=last)]


def _whole(seq: int, path: str, data: bytes) -> list[AnyMessage]:
    digest = xxhash.xxh3_128(data).digest()
    start = FileStart(
        seq=seq, path=path, size=len(data), mode=0o644, mtime_ns=T0, expected_hash=digest
    )
    chunks = [
        FileChunk(seq=seq, offset=o, data=data[o : o + CHUNK_BYTES])
        for o in range(0, len(data), CHUNK_BYTES)
    ]
    return [start, *chunks, FileEnd(seq=seq, hash=digest)]


# --- partials ---


def test_a_partial_opened_as_its_directory_is_swapped_is_made_in_the_real_one(
    folder: TargetFolder, session: ReceiverSession, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old code checked u, then made and locked the partial by its path: through the link,
    in outside (8 MiB written there as root, and renamed into outside/big at its commit)."""
    _applied(session, [MakeDir(seq=1, path="u", mode=0o755)], 1)
    swap = lambda: _swap_for_link(folder.root, "u", outside)  # noqa: E731
    _swapping_first(monkeypatch, _partial_lock, "open_locked", swap)
    data = os.urandom(BIG)
    (reply,) = session.apply_batch([*_whole(2, "u/big", data), Checkpoint(seq=2)])
    assert os.listdir(outside) == []
    # made in the real u; its commit sees u moved away and leaves it for the source's retry
    assert isinstance(reply, Error) and reply.seq == 2
    assert not (folder.root / "u.old" / "big").exists()


def test_a_relay_gives_a_child_no_bytes_from_outside_through_a_swapped_directory(
    folder: TargetFolder, session: ReceiverSession, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A relay sends a child the part of a file below its resume offset from its own partial.
    The old code checked the path, then opened the partial by it: a swap in between gave the
    child the bytes of an outside file of that name."""
    data = os.urandom(BIG)
    start, *rest = _whole(2, "u/big", data)
    _applied(session, [MakeDir(seq=1, path="u", mode=0o755)], 1)
    assert session.apply_batch([start, *rest[:4]]) == []  # the link drops mid-file
    session.close()
    assert isinstance(start, FileStart)
    name = staging.partial_name_for(Path("big"), start.expected_hash, folder.mapping_id).name
    (outside / name).write_bytes(b"secret" * CHUNK_BYTES)  # what the link leads to, same name
    swap = lambda: _swap_for_link(folder.root, "u", outside)  # noqa: E731
    _swapping_first(monkeypatch, staging, "partial_name_for", swap)
    resumed = FileStart(
        seq=2,
        path="u/big",
        size=BIG,
        mode=0o644,
        mtime_ns=T0,
        expected_hash=start.expected_hash,
        offset=2 * CHUNK_BYTES,
    )
    fd = relay_resume.open_prefix(folder, resumed)
    assert fd is None  # refused: no copy of ours at u/big any more; the child gets it whole
    assert (folder.root / "u.old" / name).stat().st_size == 4 * CHUNK_BYTES  # kept, untouched


# --- the delta base ---


@pytest.mark.skipif(not _librsync.available(), reason="librsync2 is not installed")
def test_a_delta_reads_its_base_in_the_real_directory_never_through_a_swapped_one(
    tmp_path: Path,
    folder: TargetFolder,
    session: ReceiverSession,
    outside: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The old code checked u/f (lstat, against the manifest), then librsync opened it by its
    path: a swap in between made it read outside/f (same size and mtime, other bytes) as the
    base, and the new version failed its hash (or carried outside bytes)."""
    old = os.urandom(256 * 1024)
    new = old[:1000] + b"edited" + old[1006:]
    _applied(session, [MakeDir(seq=1, path="u", mode=0o755), _small(2, "u/f", old)], 2)
    (outside / "f").write_bytes(b"s" * len(old))
    os.utime(outside / "f", ns=(T0, T0))
    outside_ino = os.stat(outside / "f").st_ino
    read_as_base: list[int] = []
    real_patch = _librsync.patch

    def patch(basis: Path, *args: object, **kwargs: object) -> None:
        if not read_as_base:
            _swap_for_link(folder.root, "u", outside)
        read_as_base.append(os.stat(basis).st_ino)
        real_patch(basis, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_librsync, "patch", patch)
    (reply,) = session.apply_batch([*delta_messages(tmp_path, old, new), Checkpoint(seq=3)])
    assert read_as_base and outside_ino not in read_as_base
    assert (outside / "f").read_bytes() == b"s" * len(old)
    assert sorted(os.listdir(outside)) == ["f"]
    # patched from the real u/f; its commit sees u moved away and leaves it for a retry
    assert isinstance(reply, Error) and reply.seq == 3, reply
    assert reply.code != ErrorCode.HASH_MISMATCH  # what reading outside/f as the base gave
    assert (folder.root / "u.old" / "f").read_bytes() == old


# --- the removal survey ---


def test_an_erase_reports_no_names_from_outside_through_a_swapped_directory(
    folder: TargetFolder,
    session: ReceiverSession,
    records: list[CommitRecord],
    outside: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The old code listed u's children in u held open, then surveyed each by its path: after a
    swap, the names of outside/d went into the purge record (read from outside, as root)."""
    (outside / "d").mkdir()
    (outside / "d" / "secret-name").write_text("x")
    writes = [_small(3, "u/d/a", b"1"), _small(4, "u/d/b", b"2")]
    _applied(
        session, [MakeDir(seq=1, path="u", mode=0o755), MakeDir(seq=2, path="u/d"), *writes], 4
    )
    swap = lambda: _swap_for_link(folder.root, "u", outside)  # noqa: E731
    _swapping_first(monkeypatch, RemovalSurvey, "tree", swap)
    _applied(session, [Erase(seq=5, path="u", keep=())], 5)
    (erased,) = [r for r in records if r.seq == 5]
    assert sorted(erased.removed) == ["u/d/a", "u/d/b"]
    assert (outside / "d" / "secret-name").exists()
    assert os.listdir(folder.root / "u.old") == []


def test_a_delete_reports_no_names_from_outside_when_a_subdirectory_is_swapped_as_it_walks(
    folder: TargetFolder,
    session: ReceiverSession,
    records: list[CommitRecord],
    outside: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The old survey listed u/d, then listed u/d/s by its path: a swap of s for a link just
    before listed outside into the purge record. Now each directory is listed through a
    descriptor opened with no link followed: the real s (moved to s.old) is what is reported."""
    (outside / "secret-name").write_text("x")
    dirs = [MakeDir(seq=1, path="u", mode=0o755), MakeDir(seq=2, path="u/d")]
    _applied(session, [*dirs, MakeDir(seq=3, path="u/d/s"), _small(4, "u/d/s/mine", b"1")], 4)
    real_scandir = os.scandir
    listed: list[object] = []

    def scandir(path: object = ".") -> object:
        listed.append(path)
        if len(listed) == 2:  # u/d was listed: its subdirectory s goes before it is
            s = folder.root / "u" / "d" / "s"
            os.rename(s, s.with_name("s.old"))
            os.symlink(outside, s)
        return real_scandir(path)  # type: ignore[call-overload]

    monkeypatch.setattr(os, "scandir", scandir)
    _applied(session, [Delete(seq=5, path="u/d")], 5)
    (deleted,) = [r for r in records if r.seq == 5]
    assert deleted.removed == ("u/d/s/mine",)
    assert os.listdir(outside) == ["secret-name"]
    assert not (folder.root / "u" / "d").exists()


# --- the version keeper ---


def test_a_delete_keeps_no_outside_file_as_a_version_through_a_swapped_directory(
    tmp_path: Path, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old code checked u/f, surveyed it, then the keeper linked (or copied) it by its path:
    after a swap, outside/f went into `.versions` (readable there, and a restore would put it
    in the tree). Now the keeper reads in u held open: the real u/f is kept."""
    root = tmp_path / "root"
    root.mkdir()
    folder = TargetFolder(
        mapping_id=1,
        source_node="src",
        root=root,
        manifest=Manifest(tmp_path / "m.db"),
        durable=False,
        keep_versions=3,
    )
    session = ReceiverSession(folder, "j", lambda *_: None)
    try:
        _applied(session, [MakeDir(seq=1, path="u", mode=0o755), _small(2, "u/f", b"mine")], 2)
        (outside / "f").write_bytes(b"secret")
        swap = lambda: _swap_for_link(root, "u", outside)  # noqa: E731
        _swapping_first(monkeypatch, RemovalSurvey, "tree", swap)
        _applied(session, [Delete(seq=3, path="u/f")], 3)
    finally:
        session.close()
    kept = [p for p in versions_dir_for(root).rglob("*") if p.is_file()]
    secret_ino = os.stat(outside / "f").st_ino
    assert all(p.read_bytes() != b"secret" and p.stat().st_ino != secret_ino for p in kept)
    assert [p.read_bytes() for p in kept] == [b"mine"]
    assert (outside / "f").read_bytes() == b"secret"
    assert not (root / "u.old" / "f").exists()
