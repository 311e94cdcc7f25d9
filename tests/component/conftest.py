"""Fixtures shared by the component tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests._fleet import Fleet

from relaysync.master.store import Store


@pytest.fixture
def fleet(tmp_path: Path, store: Store) -> Iterator[Fleet]:
    """A master's store, CA and control-server factory, with agents joined on demand."""
    f = Fleet(tmp_path, store)
    yield f
    f.close()
