from pathlib import Path

import pytest

from relaysync.errors import UnsafePath
from relaysync.transfer.paths import check_relpath, resolve_inside


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "/abs",
        "../x",
        "a/../b",
        "a//b",
        "./a",
        "a/.",
        "x\x00y",
        "a/.relaysync.f.tmp",
        "n" * 300,
        "a/" * 3000,
    ],
)
def test_unsafe_paths_refused(bad: str) -> None:
    with pytest.raises(UnsafePath):
        check_relpath(bad)


@pytest.mark.parametrize("good", ["a", "a/b/c.txt", "ünï côdé/ name", "..a", "a..", ".hidden"])
def test_safe_paths_accepted(good: str) -> None:
    assert check_relpath(good) == good


def test_root_only_when_allowed() -> None:
    assert check_relpath("", allow_root=True) == ""


def test_symlink_parent_refused(tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(outside)
    with pytest.raises(UnsafePath):
        resolve_inside(root, "link/file")
    assert resolve_inside(root, "link") == root / "link"  # the link itself may be replaced


def test_file_parent_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with pytest.raises(UnsafePath):
        resolve_inside(tmp_path, "f/child")
