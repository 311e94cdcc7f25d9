"""Tests for watch.filters."""

from __future__ import annotations

import pytest

from relaysync.constants import TEMP_PREFIX
from relaysync.errors import ConfigError
from relaysync.watch.filters import PathFilter


def test_accepts_everything_by_default() -> None:
    f = PathFilter()
    assert f.accepts("a/b.txt")
    assert f.accepts("a", is_dir=True)
    assert f.accepts("")


def test_temp_names_never_accepted_in_any_component() -> None:
    f = PathFilter(include=[r".*"])
    assert not f.accepts(f"{TEMP_PREFIX}x.tmp")
    assert not f.accepts(f"a/{TEMP_PREFIX}x.tmp")
    assert not f.accepts(f"{TEMP_PREFIX}dir/x", is_dir=False)
    assert not f.accepts(f"a/{TEMP_PREFIX}d", is_dir=True)


def test_exclude_wins_over_include() -> None:
    f = PathFilter(include=[r"\.html$"], exclude=[r"^private/"])
    assert f.accepts("pub/index.html")
    assert not f.accepts("private/index.html")
    assert not f.accepts("pub/app.js")


def test_directories_accepted_unless_excluded() -> None:
    f = PathFilter(include=[r"\.html$"], exclude=[r"(^|/)cache$"])
    assert f.accepts("pub", is_dir=True)
    assert not f.accepts("pub/cache", is_dir=True)
    assert not f.accepts("pub", is_dir=False)


def test_bad_regex_names_the_pattern() -> None:
    with pytest.raises(ConfigError, match=r"\(unclosed"):
        PathFilter(exclude=["(unclosed"])
