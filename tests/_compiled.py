"""The compiled parts of relaysync (setup.py's extensions), as tests of them need them: a test
fails, never skips, where one was not built, so that a broken build cannot pass unseen."""

from __future__ import annotations

from typing import TypeVar

import pytest

T = TypeVar("T")


def built(module: T | None, name: str) -> T:
    """`module` (None where its import failed: the agent's fallback), or fail the test."""
    if module is None:
        pytest.fail(f"{name} is not built: run `bash scripts/install`")
    return module
