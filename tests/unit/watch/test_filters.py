"""Tests for watch.filters."""

from __future__ import annotations

import logging
import os

import pytest
from hypothesis import given
from hypothesis import strategies as st

from relaysync.constants import TEMP_PREFIX
from relaysync.errors import ConfigError
from relaysync.watch.filters import PathFilter, is_temp_path


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


def test_names_that_are_not_utf8_are_refused_with_one_warning_each(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="relaysync.watch.filters")
    f = PathFilter(root="/srv/www")
    bad = os.fsdecode(b"caf\xe9.html")  # a Latin-1 name from an old upload: a lone surrogate
    assert not f.accepts(bad)
    assert not f.accepts(bad)
    assert not f.accepts(f"{bad}/x", is_dir=True)
    assert f.accepts("café.html")  # valid UTF-8 is fine, whatever the script
    warnings = [r.getMessage() for r in caplog.records]
    assert warnings == [
        "The name of /srv/www/caf\\xe9.html is not valid UTF-8, so it is not replicated. "
        "Rename it: relaysync replicates UTF-8 names only.",
        "The name of /srv/www/caf\\xe9.html/x is not valid UTF-8, so it is not replicated "
        "(nor anything below it). Rename it: relaysync replicates UTF-8 names only.",
    ]


def test_symlink_targets_that_are_not_utf8_are_refused(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="relaysync.watch.filters")
    f = PathFilter()
    assert f.utf8_link_target("link", "café")
    assert not f.utf8_link_target("link", os.fsdecode(b"caf\xe9"))
    assert "symlink link is not valid UTF-8" in caplog.text


_PIECES = st.sampled_from(["a", ".", "/", "relaysync", TEMP_PREFIX, "x.relaysync", "é"])


@given(st.lists(_PIECES, max_size=8).map("".join))
def test_a_temp_path_is_one_with_a_component_starting_with_the_prefix(relpath: str) -> None:
    """The quick test (the prefix anywhere, then at a component's start) says what the
    definition says: some component starts with TEMP_PREFIX."""
    assert is_temp_path(relpath) == any(p.startswith(TEMP_PREFIX) for p in relpath.split("/"))
