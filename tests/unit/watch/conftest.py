"""Fixtures shared by the watch tests: the anyio backend and small tree helpers."""

from __future__ import annotations

from pathlib import Path

import pytest

from relaysync.watch.filters import PathFilter


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    root.mkdir()
    return root


@pytest.fixture
def accept_all() -> PathFilter:
    return PathFilter()
