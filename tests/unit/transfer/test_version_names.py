"""The versions of one file are `<name>@<stamp>` only: a file whose name extends another's with
"@" (`icon` and `icon@2x`, as retina images are named) keeps its own versions, and they are
neither listed, restored nor pruned as the other's."""

from __future__ import annotations

import os
from pathlib import Path

from relaysync.transfer.versions import VersionKeeper, versions_of


def _save(keeper: VersionKeeper, name: str, content: bytes) -> None:
    """Write `content` at `name` in the keeper's root and keep it as a version, as a replace does."""
    (keeper.root / name).write_bytes(content)
    fd = os.open(keeper.root, os.O_PATH | os.O_DIRECTORY)
    try:
        keeper.save(fd, name, name)
    finally:
        os.close(fd)


def test_a_files_versions_are_not_those_of_a_name_that_extends_it(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    keeper = VersionKeeper(root, keep=1)
    _save(keeper, "icon@2x", b"retina v1")
    _save(keeper, "icon", b"icon v1")
    _save(keeper, "icon", b"icon v2")

    assert len(keeper.versions("icon@2x")) == 1  # not pruned as one of icon's
    assert len(keeper.versions("icon")) == 1  # its own newest, not icon@2x's
    keeper.restore("icon")
    assert (root / "icon").read_bytes() == b"icon v2"
    keeper.restore("icon@2x")
    assert (root / "icon@2x").read_bytes() == b"retina v1"


def test_only_names_with_a_stamp_after_the_separator_are_versions() -> None:
    names = [
        "a@20261206T160000.000001Z",
        "a@20261206T160000.000002Z",
        "a@2x@20261206T160000.000003Z",
        "a@note",
        "a@20261206T160000.000004Z.tmp",
        "ab@20261206T160000.000005Z",
    ]
    assert versions_of("a", names) == ["a@20261206T160000.000001Z", "a@20261206T160000.000002Z"]
    assert versions_of("a@2x", names) == ["a@2x@20261206T160000.000003Z"]
