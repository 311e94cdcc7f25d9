"""A target's Rename, Erase and Symlink (and the removal of a link its policy refuses) act in the
directories they checked, held open, never by path: a local user who swaps a directory for a
link between the check and the act cannot make the agent move, delete or create anything
outside the folder. Also: `remove_tree_at` leaks no descriptor when it fails, and the
directories made on the way to a file get a sane mode whatever the agent's umask."""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from relaysync._util import fs
from relaysync.protocol.messages import (
    Ack,
    AnyMessage,
    Checkpoint,
    CommitRecord,
    Erase,
    MakeDir,
    Rename,
    Symlink,
)
from relaysync.transfer.receiver import ReceiverSession
from relaysync.transfer.removal import RemovalSurvey
from relaysync.transfer.target_folder import TargetFolder
from relaysync.watch.manifest import Manifest
from relaysync.watch.target_policy import TargetPolicy
from tests.unit.transfer._target_helpers import small_file as _small


@pytest.fixture
def outside(tmp_path: Path) -> Path:
    path = tmp_path / "outside"
    path.mkdir()
    return path


@pytest.fixture
def session(folder: TargetFolder) -> Iterator[ReceiverSession]:
    records: list[CommitRecord] = []
    s = ReceiverSession(folder, "j", lambda _w, batch: records.extend(batch))
    yield s
    s.close()


def _swap_for_link(root: Path, name: str, outside: Path) -> None:
    """What a local user who can write in the tree does: the directory goes, a link takes its name."""
    os.rename(root / name, root / f"{name}.old")
    os.symlink(outside, root / name)


def _swap_at_first_survey(
    monkeypatch: pytest.MonkeyPatch, root: Path, name: str, outside: Path
) -> None:
    """Swap `name` for a link once the op has checked its paths: at its first survey of what it
    removes (a large tree takes seconds to survey), before it acts."""
    tree: Callable[..., str] = RemovalSurvey.tree

    def surveyed_then_swapped(self: RemovalSurvey, *args: object, **kwargs: object) -> str:
        kind = tree(self, *args, **kwargs)
        if not (root / name).is_symlink():
            _swap_for_link(root, name, outside)
        return kind

    monkeypatch.setattr(RemovalSurvey, "tree", surveyed_then_swapped)


def _applied(session: ReceiverSession, ops: list[AnyMessage], last: int) -> None:
    assert session.apply_batch([*ops, Checkpoint(seq=last)]) == [Ack(mapping_id=1, watermark=last)]


def test_a_rename_into_a_directory_swapped_for_a_link_lands_in_the_real_one(
    folder: TargetFolder, session: ReceiverSession, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old code renamed by path: the payload went to outside/cronjob."""
    _applied(session, [MakeDir(seq=1, path="u", mode=0o755), _small(2, "payload", b"evil")], 2)
    _swap_at_first_survey(monkeypatch, folder.root, "u", outside)
    _applied(session, [Rename(seq=3, path="payload", new_path="u/cronjob")], 3)
    assert os.listdir(outside) == []
    assert (folder.root / "u.old" / "cronjob").read_bytes() == b"evil"


def test_a_rename_out_of_a_directory_swapped_for_a_link_moves_nothing_in_from_outside(
    folder: TargetFolder, session: ReceiverSession, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old code moved outside/f into the folder (gone from outside, served to the source)."""
    (outside / "f").write_bytes(b"secret")
    _applied(session, [MakeDir(seq=1, path="u", mode=0o755), _small(2, "u/f", b"mine")], 2)
    _swap_at_first_survey(monkeypatch, folder.root, "u", outside)
    _applied(session, [Rename(seq=3, path="u/f", new_path="g")], 3)
    assert (outside / "f").read_bytes() == b"secret"
    assert (folder.root / "g").read_bytes() == b"mine"
    assert os.listdir(folder.root / "u.old") == []


def test_an_erase_of_a_directory_swapped_for_a_link_deletes_nothing_outside(
    folder: TargetFolder, session: ReceiverSession, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old code listed the directory, then removed each child by its path: outside/victim."""
    (outside / "victim").write_text("precious")
    writes = [_small(2, "u/a", b"1"), _small(3, "u/victim", b"2"), _small(4, "u/kept", b"3")]
    _applied(session, [MakeDir(seq=1, path="u", mode=0o755), *writes], 4)
    _swap_at_first_survey(monkeypatch, folder.root, "u", outside)
    _applied(session, [Erase(seq=5, path="u", keep=("kept",))], 5)
    assert os.listdir(outside) == ["victim"]
    assert os.listdir(folder.root / "u.old") == ["kept"]


def test_a_symlink_in_a_directory_swapped_for_a_link_is_made_in_the_real_one(
    folder: TargetFolder, session: ReceiverSession, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old code made the link (and renamed it into place) by path: in outside."""
    _applied(session, [MakeDir(seq=1, path="u", mode=0o755), _small(2, "u/l", b"file")], 2)
    _swap_at_first_survey(monkeypatch, folder.root, "u", outside)
    _applied(session, [Symlink(seq=3, path="u/l", target="x")], 3)
    assert os.listdir(outside) == []
    assert os.readlink(folder.root / "u.old" / "l") == "x"
    assert [n for n in os.listdir(folder.root / "u.old") if n != "l"] == []  # no temp left


def test_a_refused_link_never_removes_through_a_directory_swapped_for_a_link(
    folder: TargetFolder, session: ReceiverSession, outside: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A link the "safe" policy refuses removes what its path held: the old code removed it by
    path, after the check, and so deleted outside/l."""
    (outside / "l").write_text("precious")
    _applied(session, [MakeDir(seq=1, path="u", mode=0o755), _small(2, "u/l", b"file")], 2)
    refuses: Callable[[TargetPolicy, str, str], str] = TargetPolicy.refuses_link

    def refused_then_swapped(policy: TargetPolicy, path: str, target: str) -> str:
        reason = refuses(policy, path, target)
        if path == "u/l" and not (folder.root / "u").is_symlink():
            _swap_for_link(folder.root, "u", outside)
        return reason

    monkeypatch.setattr(TargetPolicy, "refuses_link", refused_then_swapped)
    _applied(session, [Symlink(seq=3, path="u/l", target="../../../etc/passwd")], 3)
    assert (outside / "l").read_text() == "precious"


def _open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


def test_remove_tree_at_leaks_no_descriptor_when_it_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old loop opened a subdirectory, then fstat'ed its parent: an error there (EIO) left
    the subdirectory's descriptor open, one a failed removal, until the agent ran out."""
    (tmp_path / "d" / "s1" / "s2").mkdir(parents=True)

    def failing(_fd: int) -> tuple[int, int]:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(fs, "_dev_ino", failing)
    parent = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        before = _open_fds()
        for _ in range(3):
            with pytest.raises(OSError, match="I/O error"):
                fs.remove_tree_at(parent, "d")
        assert _open_fds() == before
    finally:
        os.close(parent)


@pytest.fixture
def no_umask() -> Iterator[None]:
    """An agent started with umask 0 (systemd's default UMask is 0022, a shell's may be 0)."""
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def test_make_dirs_at_makes_no_world_writable_directory_under_umask_0(
    tmp_path: Path, no_umask: None
) -> None:
    """os.makedirs' 0o777: each directory made on the way was world-writable until a MakeDir."""
    root = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    try:
        fd, made = fs.make_dirs_at(root, "a/b")
        os.close(fd)
    finally:
        os.close(root)
    assert made == "a"
    for rel in ("a", "a/b"):
        assert stat.S_IMODE(os.stat(tmp_path / rel).st_mode) == 0o755


def test_directories_made_on_the_way_to_a_file_honour_the_mode_mask(
    tmp_path: Path, no_umask: None
) -> None:
    root = tmp_path / "root"
    root.mkdir()
    folder = TargetFolder(
        mapping_id=1,
        source_node="src",
        root=root,
        manifest=Manifest(tmp_path / "m.db"),
        durable=False,
        policy=TargetPolicy(mode_mask=0o077),
    )
    s = ReceiverSession(folder, "j", lambda _w, _r: None)
    try:
        _applied(s, [_small(1, "p/q/f", b"x")], 1)
    finally:
        s.close()
    for rel in ("p", "p/q"):
        assert stat.S_IMODE(os.stat(root / rel).st_mode) == 0o700


def test_a_rename_of_a_directory_over_a_file_replaces_it(
    folder: TargetFolder, session: ReceiverSession
) -> None:
    """rename(2) refuses a directory over a non-directory (ENOTDIR, an I/O failure at every
    retry): the file the source no longer has goes, as a directory in a file's way does."""
    _applied(session, [MakeDir(seq=1, path="d", mode=0o755), _small(2, "d/x", b"x")], 2)
    _applied(session, [_small(3, "f", b"old file")], 3)
    _applied(session, [Rename(seq=4, path="d", new_path="f")], 4)
    assert os.listdir(folder.root / "f") == ["x"] and not (folder.root / "d").exists()
    assert folder.manifest.get("f/x") is not None
