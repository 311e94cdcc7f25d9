"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from relaysync.watch.manifest import Manifest


@pytest.fixture
def manifest(tmp_path: Path) -> Iterator[Manifest]:
    """An empty manifest on disk, closed after the test."""
    m = Manifest(tmp_path / "manifest.db")
    yield m
    m.close()
