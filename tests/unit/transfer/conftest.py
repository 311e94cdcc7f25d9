"""Fixtures shared by the transfer unit tests."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaysync.transfer.target_folder import TargetFolder
from relaysync.watch.manifest import Manifest


@pytest.fixture
def folder(tmp_path: Path) -> TargetFolder:
    """An empty target folder of mapping 1 fed by "src", durability fast (a module may override)."""
    root = tmp_path / "root"
    root.mkdir()
    return TargetFolder(
        mapping_id=1,
        source_node="src",
        root=root,
        manifest=Manifest(tmp_path / "m.db"),
        durable=False,
    )
