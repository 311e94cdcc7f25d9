"""Defects a review of the fd-based target paths and the target policy found (2026-12-05): a file
staged in a directory moved meanwhile, links moved out of the folder by a Rename, escaping links
left on disk by the start-up scan, and a SetAttr racing a swap for a link."""

from __future__ import annotations

import os
import pathlib
import stat
from collections.abc import Sequence
from pathlib import Path

import pytest

from relaysync.protocol.messages import (
    Ack,
    Checkpoint,
    CommitRecord,
    Error,
    ErrorCode,
    MakeDir,
    Rename,
    SetAttr,
    Symlink,
)
from relaysync.transfer import _tree_ops
from relaysync.transfer.conflicts import session_for
from relaysync.transfer.receiver import ReceiverSession
from relaysync.transfer.target_folder import TargetFolder
from relaysync.watch.filters import PathFilter
from relaysync.watch.recorder import ChangeRecorder
from relaysync.watch.target_policy import TargetPolicy
from relaysync.watch.watcher import FsEvent
from tests.unit.transfer._target_helpers import T0
from tests.unit.transfer._target_helpers import nm_members as _members
from tests.unit.transfer._target_helpers import small_file as _small

Reports = list[tuple[int, Sequence[CommitRecord]]]


def test_a_file_staged_in_a_directory_another_member_renames_is_retried_not_lost(
    tmp_path: Path,
) -> None:
    """The old commit renamed into the descriptor held since staging: the file appeared at e/x,
    A's manifest recorded d/x and its watermark passed it, so it was never sent again."""
    a, b = _members(tmp_path)
    session_a = session_for(a, "ja", lambda *_: None)
    session_b = session_for(b, "jb", lambda *_: None)
    try:
        made = [MakeDir(seq=1, path="d", mode=0o755), _small(2, "d/own", b"b"), Checkpoint(seq=2)]
        assert session_b.apply_batch(made) == [Ack(mapping_id=2, watermark=2)]
        assert session_a.apply_batch([_small(1, "d/x", b"from A")]) == []  # staged, no Checkpoint
        moved = [Rename(seq=3, path="d", new_path="e"), Checkpoint(seq=3)]
        assert session_b.apply_batch(moved) == [Ack(mapping_id=2, watermark=3)]
        (reply,) = session_a.apply_batch([Checkpoint(seq=2)])
    finally:
        session_a.close()
        session_b.close()
    assert isinstance(reply, Error) and reply.code == ErrorCode.IO_ERROR and reply.seq == 1
    assert "renamed or removed since a file was staged" in reply.detail
    assert sorted(os.listdir(a.root / "e")) == ["own"]  # nothing committed into the moved one
    assert a.manifest.get("d/x") is None and a.watermark("ja") == 0  # the source sends it again


def test_a_file_staged_in_a_directory_moved_locally_is_retried_not_committed_there(
    folder: TargetFolder,
) -> None:
    reports: Reports = []
    session = ReceiverSession(folder, "j", lambda w, r: reports.append((w, list(r))))
    try:
        assert session.apply_batch(
            [MakeDir(seq=1, path="d"), MakeDir(seq=2, path="d2"), Checkpoint(seq=2)]
        ) == [Ack(mapping_id=1, watermark=2)]
        staged = [_small(3, "d/x", b"x"), _small(4, "d2/y", b"y"), _small(5, "top", b"t")]
        assert session.apply_batch(staged) == []
        os.rename(folder.root / "d", folder.root / "moved")  # a local `mv` meanwhile
        (reply,) = session.apply_batch([Checkpoint(seq=5)])
        assert isinstance(reply, Error) and reply.seq == 3
        assert os.listdir(folder.root / "moved") == []
        assert not any(n.startswith(".relaysync") for n in os.listdir(folder.root / "d2"))
        assert folder.watermark("j") == 2 and folder.manifest.get("d/x") is None
        # the source's retry lands where it asked
        assert session.apply_batch([*staged, Checkpoint(seq=5)]) == [Ack(mapping_id=1, watermark=5)]
    finally:
        session.close()
    assert (folder.root / "d/x").read_bytes() == b"x"
    assert (folder.root / "d2/y").read_bytes() == b"y"


def _restart(folder: TargetFolder) -> None:
    """The target agent's start-up scan of its folder (agent/_target_role.py _open_target)."""
    recorder = ChangeRecorder(
        folder.root,
        folder.manifest,
        PathFilter((), (), root=folder.root),
        hard_links=False,
        policy=folder.policy,
    )
    recorder.detect_and_apply([FsEvent(kind="rescan", path="")])


DEEP = ["a", "a/b", "a/b/c", "a/b/c/d", "a/b/c/d/e", "a/b/c/d/e/f"]


def test_links_a_rename_moves_up_out_of_the_folder_are_refused(folder: TargetFolder) -> None:
    """Safe at depth 6, `../../../../../../etc/passwd` leads to /etc/passwd at the top: the old
    rename left root/passwd and root/f/shadowdir pointing at /etc."""
    reports: Reports = []
    ops: list = [MakeDir(seq=i + 1, path=d) for i, d in enumerate(DEEP)]
    ops += [
        Symlink(seq=10, path="a/b/c/d/e/f/passwd", target="../../../../../../etc/passwd"),
        Symlink(seq=11, path="a/b/c/d/e/f/shadowdir", target="../../../../../../etc"),
        Symlink(seq=12, path="a/b/c/d/e/f/inside", target="../x"),  # a/b/c/d/e/x, then x: stays
        Rename(seq=13, path="a/b/c/d/e/f/passwd", new_path="passwd"),
        Rename(seq=14, path="a/b/c/d/e/f", new_path="f"),
        Checkpoint(seq=14),
    ]
    session = ReceiverSession(folder, "j", lambda w, r: reports.append((w, list(r))))
    try:
        assert session.apply_batch(ops) == [Ack(mapping_id=1, watermark=14)]
    finally:
        session.close()
    refused = {r.path: r for _, records in reports for r in records if not r.ok}
    assert set(refused) == {"passwd", "f/shadowdir"}
    for record in refused.values():
        assert record.op == "symlink" and "points outside the folder" in record.error
        assert 'set the mapping\'s symlink policy to "any"' in record.error
    assert not os.path.lexists(folder.root / "passwd")
    assert not os.path.lexists(folder.root / "f/shadowdir")
    assert os.readlink(folder.root / "f/inside") == "../x"
    recorded = {p: folder.manifest.get(p) for p in ("passwd", "f/shadowdir", "f/inside")}
    assert {p: e.link_target for p, e in recorded.items() if e} == {
        "passwd": "../../../../../../etc/passwd",
        "f/shadowdir": "../../../../../../etc",
        "f/inside": "../x",
    }  # as the source has them: no comparison sends them again
    _restart(folder)  # and the start-up scan keeps them recorded, absent
    assert folder.manifest.get("passwd") is not None
    assert folder.manifest.get("f/shadowdir") is not None


def test_the_any_policy_keeps_links_a_rename_moves_up(folder: TargetFolder) -> None:
    folder.policy = TargetPolicy(symlinks="any")
    ops: list = [MakeDir(seq=1, path="a")]
    ops += [
        Symlink(seq=2, path="a/l", target="../x"),
        Rename(seq=3, path="a/l", new_path="l"),
        Checkpoint(seq=3),
    ]
    session = ReceiverSession(folder, "j", lambda *_: None)
    try:
        assert session.apply_batch(ops) == [Ack(mapping_id=1, watermark=3)]
    finally:
        session.close()
    assert os.readlink(folder.root / "l") == "../x"


def test_the_start_up_scan_under_safe_removes_escaping_links_and_keeps_them_recorded(
    folder: TargetFolder,
) -> None:
    """Links written while the policy was "any" (or before it existed) stayed on disk and in the
    manifest after a restart under "safe", served for ever: nothing made the source send them."""
    folder.policy = TargetPolicy(symlinks="any")
    ops = [
        MakeDir(seq=1, path="d"),
        Symlink(seq=2, path="passwd", target="/etc/passwd"),
        Symlink(seq=3, path="d/up", target="../../x"),
        Symlink(seq=4, path="d/ok", target="../passwd"),
        Checkpoint(seq=4),
    ]
    session = ReceiverSession(folder, "j", lambda *_: None)
    try:
        assert session.apply_batch(ops) == [Ack(mapping_id=1, watermark=4)]
    finally:
        session.close()
    os.symlink("/etc", folder.root / "d" / "local")  # made by a local user, never recorded
    _restart(folder)  # still "any": everything stays
    assert os.readlink(folder.root / "passwd") == "/etc/passwd"
    folder.policy = TargetPolicy()
    for _ in range(2):  # the next restart keeps them recorded, absent
        _restart(folder)
        for path in ("passwd", "d/up", "d/local"):
            assert not os.path.lexists(folder.root / path), path
        recorded = {p: folder.manifest.get(p) for p in ("passwd", "d/up", "d/local")}
        assert {p: e.link_target for p, e in recorded.items() if e} == {
            "passwd": "/etc/passwd",
            "d/up": "../../x",
            "d/local": "/etc",
        }
        assert os.readlink(folder.root / "d/ok") == "../passwd"


def test_a_setattr_never_changes_the_mode_of_a_file_swapped_in_through_a_link(
    folder: TargetFolder, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The old SetAttr checked is_symlink() and then chmod'ed the path, following a link a local
    user swapped in between: an outside file went from 0600 to 0755."""
    outside = tmp_path / "victim"
    outside.write_text("x")
    os.chmod(outside, 0o600)
    session = ReceiverSession(folder, "j", lambda *_: None)
    assert session.apply_batch([_small(1, "a", b"1"), Checkpoint(seq=1)])
    swapped: list[bool] = []

    def swap() -> None:
        if not swapped:
            swapped.append(True)
            os.rename(folder.root / "a", folder.root / "a.old")
            os.symlink(outside, folder.root / "a")

    is_symlink, chmod_fd = pathlib.Path.is_symlink, _tree_ops.chmod_fd

    def checked_then_swapped(path: pathlib.Path) -> bool:  # the old code's check, then the swap
        found = is_symlink(path)
        if path.name == "a":
            swap()
        return found

    def swapped_then_chmod(fd: int, mode: int) -> None:  # the new code: opened, then the swap
        swap()
        chmod_fd(fd, mode)

    monkeypatch.setattr(pathlib.Path, "is_symlink", checked_then_swapped)
    monkeypatch.setattr(_tree_ops, "chmod_fd", swapped_then_chmod)
    try:
        session.apply_batch([SetAttr(seq=2, path="a", mode=0o755, mtime_ns=T0), Checkpoint(seq=2)])
    finally:
        session.close()
    assert swapped
    assert stat.S_IMODE(os.stat(outside).st_mode) == 0o600
    assert os.stat(outside).st_mtime_ns != T0
