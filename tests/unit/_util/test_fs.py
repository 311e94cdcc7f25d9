"""Opening and removing below a folder without following a symlink on the way: a directory
swapped for a link after a check must not lead a read or a removal out of the folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relaysync._util.fs import open_regular_in, rmdir_in


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root, outside = tmp_path / "root", tmp_path / "outside"
    (root / "a" / "empty").mkdir(parents=True)
    (root / "a" / "f").write_text("inside")
    (outside / "empty").mkdir(parents=True)
    (outside / "f").write_text("outside")
    (root / "link").symlink_to(outside)
    return root


def test_a_file_is_opened_below_the_root_never_through_a_link(tree: Path) -> None:
    opened = open_regular_in(tree, "a/f")
    assert opened is not None
    fd, st = opened
    try:
        assert os.read(fd, 100) == b"inside" and st.st_size == 6
    finally:
        os.close(fd)
    assert open_regular_in(tree, "link/f") is None
    assert open_regular_in(tree, "a/missing") is None
    assert open_regular_in(tree, "a") is None  # a directory is not a regular file


def test_an_empty_directory_is_removed_below_the_root_never_through_a_link(tree: Path) -> None:
    rmdir_in(tree, "a/empty")
    assert not (tree / "a" / "empty").exists()
    with pytest.raises(OSError):
        rmdir_in(tree, "link/empty")  # the same name outside the folder stays
    assert (tree.parent / "outside" / "empty").is_dir()
    with pytest.raises(OSError):
        rmdir_in(tree, "a")  # not empty
    with pytest.raises(OSError):
        rmdir_in(tree, "link")  # the link itself is no directory to remove
    assert (tree / "link").is_symlink()
