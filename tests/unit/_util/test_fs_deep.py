"""Opening below a folder along a relative path longer than PATH_MAX (4096 bytes with its NUL):
openat2, given the whole path, refused it (ENAMETOOLONG), so a scan could never list such a
directory (SourceListError, looked at again for ever). It is resolved in parts now, each part
under the same rules: no symlink followed, nothing out of the folder."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest

from relaysync._util import _openat2
from relaysync._util.fs import open_dir_at, open_dir_in, open_regular_in

pytestmark = pytest.mark.skipif(
    not _openat2.available(), reason="openat2 cannot be called on this platform"
)

NAME = "n" * 200


def make_deep(root: Path, depth: int) -> str:
    """Directories NAME/NAME/... `depth` deep below root, made a step at a time (a whole path
    over PATH_MAX cannot be given to mkdir); returns their relative path."""
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(depth):
            os.mkdir(NAME, dir_fd=fd)
            child = os.open(NAME, os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = child
        out = os.open("f", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, b"deep")
        os.close(out)
    finally:
        os.close(fd)
    return "/".join([NAME] * depth)


def test_a_directory_5000_bytes_deep_is_opened_and_its_file_read(tmp_path: Path) -> None:
    deep = make_deep(tmp_path, 25)
    assert len(deep) > 5000
    fd = open_dir_in(tmp_path, deep)
    try:
        assert os.listdir(fd) == ["f"]
    finally:
        os.close(fd)
    os.close(open_dir_at(os.open(tmp_path, os.O_PATH), deep))
    opened = open_regular_in(tmp_path, f"{deep}/f")
    assert opened is not None
    try:
        assert os.read(opened[0], 10) == b"deep"
    finally:
        os.close(opened[0])


def test_a_symlink_in_a_later_part_of_a_deep_path_is_not_followed(tmp_path: Path) -> None:
    """The part after the first is resolved from the directory the first led to, with the same
    rules: a directory there swapped for a link (here to "/") is refused, not followed."""
    root = tmp_path / "root"
    root.mkdir()
    deep = make_deep(root, 25)
    head, _, _ = deep.rpartition("/")  # past the first part: over 4,000 bytes
    fd = open_dir_in(root, head)
    try:
        os.rename(NAME, "moved", src_dir_fd=fd, dst_dir_fd=fd)
        os.symlink("/", NAME, dir_fd=fd)
    finally:
        os.close(fd)
    with pytest.raises(OSError) as caught:
        os.close(open_dir_in(root, deep))
    assert caught.value.errno == errno.ELOOP
    assert open_regular_in(root, f"{head}/{NAME}/etc/hostname") is None
