"""Fixtures shared by the unit tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from relaysync.watch import _file_hash
from relaysync.watch.manifest import Manifest
from tests._compiled import built


@pytest.fixture
def manifest(tmp_path: Path) -> Iterator[Manifest]:
    """An empty manifest on disk, closed after the test."""
    m = Manifest(tmp_path / "manifest.db")
    yield m
    m.close()


@pytest.fixture(params=["compiled", "python"])
def small_read(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """How `hash_file` reads a small file whole: in one compiled call (watch/_smallread.c), or
    in Python (a checkout without its extensions built; also every file it cannot take)."""
    if request.param == "python":
        monkeypatch.setattr(_file_hash, "_smallread", None)
    else:
        built(_file_hash._smallread, "relaysync.watch._smallread")
    return str(request.param)
