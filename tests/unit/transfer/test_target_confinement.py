"""A target writes nothing outside its folder, whatever a local user swaps in for a directory and
whenever; deep trees and paths a target cannot hold are refused or handled, never retried for
ever or crashed on."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import xxhash

from relaysync.protocol.messages import (
    Ack,
    AnyMessage,
    Checkpoint,
    CommitRecord,
    Delete,
    Error,
    FileChunk,
    FileEnd,
    FileStart,
    MakeDir,
)
from relaysync.transfer import staging
from relaysync.transfer.receiver import ReceiverSession
from relaysync.transfer.target_folder import TargetFolder
from relaysync.watch.manifest import Manifest
from tests.unit.transfer._target_helpers import T0
from tests.unit.transfer._target_helpers import small_file as _small

DEEPER_THAN_RECURSION = 1200  # Python's default recursion limit is 1000


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


def _streamed(seq: int, path: str, data: bytes) -> list[AnyMessage]:
    return [
        FileStart(seq=seq, path=path, size=len(data), mode=0o644, mtime_ns=T0),
        FileChunk(seq=seq, offset=0, data=data),
        FileEnd(seq=seq, hash=xxhash.xxh3_128(data).digest()),
    ]


def _write(kind: str, seq: int, path: str, data: bytes) -> list[AnyMessage]:
    return [_small(seq, path, data)] if kind == "small" else _streamed(seq, path, data)


def _session(folder: TargetFolder) -> tuple[ReceiverSession, list[CommitRecord]]:
    records: list[CommitRecord] = []
    return ReceiverSession(folder, "j", lambda _w, batch: records.extend(batch)), records


def _swap_for_link(root: Path, name: str, outside: Path) -> None:
    """What a local user who can write in the tree does: the directory goes, a link takes its name."""
    os.rename(root / name, root / f"{name}.old")
    os.symlink(outside, root / name)


@pytest.mark.parametrize("kind", ["small", "streamed"])
def test_a_directory_swapped_for_a_link_between_batches_is_never_written_through(
    folder: TargetFolder, tmp_path: Path, kind: str
) -> None:
    """The directory proven real in one batch is proven again in the next: it was trusted for
    the whole session, and the next batch's file was created outside the folder."""
    outside = tmp_path / "outside"
    outside.mkdir()
    session, records = _session(folder)
    first = [*_write(kind, 1, "u/a", b"1"), *_write(kind, 2, "u/a2", b"2"), Checkpoint(seq=2)]
    assert session.apply_batch(first) == [Ack(mapping_id=1, watermark=2)]
    _swap_for_link(folder.root, "u", outside)
    replies = session.apply_batch([*_write(kind, 3, "u/b", b"outside?"), Checkpoint(seq=3)])
    assert replies == [Ack(mapping_id=1, watermark=3)]  # refused, not retried for ever
    assert os.listdir(outside) == []
    refused = [r for r in records if r.seq == 3]
    assert refused and not refused[0].ok and "symlink" in refused[0].error
    session.close()


@pytest.mark.parametrize("kind", ["small", "streamed"])
def test_a_directory_swapped_for_a_link_between_its_check_and_the_write_is_not_followed(
    folder: TargetFolder, tmp_path: Path, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The swap lands after the directory was checked (here: its first file of the batch) and
    before the temp file is created and renamed: the file goes into the real directory it
    checked, never through the link (the old code created it by its path, outside); nor is it
    committed there, a directory moved away since (the manifest would record it at u/b): the
    batch is discarded and the source retries it."""
    outside = tmp_path / "outside"
    outside.mkdir()
    session, _records = _session(folder)
    assert session.apply_batch([*_write(kind, 1, "u/a", b"1")]) == []
    temp_name: Callable[[str], str] = staging._temp_name

    def swapping_then_naming(final: str) -> str:
        if final.endswith("/u/b") and not (folder.root / "u").is_symlink():
            _swap_for_link(folder.root, "u", outside)
        return temp_name(final)

    monkeypatch.setattr(staging, "_temp_name", swapping_then_naming)
    replies = session.apply_batch([*_write(kind, 2, "u/b", b"inside"), Checkpoint(seq=2)])
    assert os.listdir(outside) == []
    assert len(replies) == 1 and isinstance(replies[0], Error) and replies[0].seq == 1
    assert "renamed or removed since a file was staged" in replies[0].detail
    assert os.listdir(folder.root / "u.old") == []  # the directory it checked: nothing left there
    assert folder.manifest.get("u/b") is None and folder.watermark("j") == 0
    session.close()


def test_a_path_deeper_than_the_limit_is_refused_and_the_next_changes_flow(
    folder: TargetFolder,
) -> None:
    """A RecursionError made the session fail "unexpectedly" and the source resend for ever."""
    deep = "/".join(["a"] * 1500)
    session, records = _session(folder)
    replies = session.apply_batch(
        [
            MakeDir(seq=1, path=deep),
            _small(2, f"{deep}/f", b"x"),
            _small(3, "ok", b"y"),
            Checkpoint(seq=3),
        ]
    )
    assert replies == [Ack(mapping_id=1, watermark=3)]
    assert [(r.seq, r.ok) for r in records] == [(1, False), (2, False), (3, True)]
    assert "more than 255 components" in records[0].error
    assert not (folder.root / "a").exists()


def _deep_tree(root: Path, levels: int) -> Path:
    """A chain of directories `levels` deep made locally (an older agent, a local user)."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir("a", dir_fd=fd)
            child = os.open("a", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        os.close(os.open(".relaysync.stale.x1.tmp", os.O_CREAT | os.O_WRONLY, dir_fd=fd))
    finally:
        os.close(fd)
    return root / "a"


def test_a_tree_deeper_than_a_recursion_is_deleted_and_cleaned_at_a_restart(
    folder: TargetFolder,
) -> None:
    """shutil.rmtree and os.walk recurse: the Delete raised RecursionError (the tree stayed) and
    so did the clean-up of stale temp files at every start, refusing the mapping for good."""
    _deep_tree(folder.root, DEEPER_THAN_RECURSION)
    assert staging.clean_stale_temps(folder.root) == 1  # a restart opens the mapping
    session, records = _session(folder)
    replies = session.apply_batch([Delete(seq=1, path="a"), Checkpoint(seq=1)])
    assert replies == [Ack(mapping_id=1, watermark=1)]
    assert records[0].ok and not os.path.lexists(folder.root / "a")


def test_a_recursion_error_of_an_op_is_a_refused_op(
    folder: TargetFolder, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nothing recurses over a path any more; should something, the op is refused (recorded, the
    watermark past it), not an exception that ends the session for the source to resend."""
    session, records = _session(folder)

    def too_deep(_msg: MakeDir) -> None:
        raise RecursionError("maximum recursion depth exceeded")

    monkeypatch.setattr(session, "_make_dir", too_deep)
    session.stages_new_dirs = False  # the usual MakeDir, not one built under a temp name
    replies = session.apply_batch(
        [MakeDir(seq=1, path="d"), _small(2, "f", b"x"), Checkpoint(seq=2)]
    )
    assert replies == [Ack(mapping_id=1, watermark=2)]
    assert [(r.seq, r.ok) for r in records] == [(1, False), (2, True)]
