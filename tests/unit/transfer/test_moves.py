"""Tests for transfer.moves: files found gone when sent, followed through renames."""

from __future__ import annotations

from pathlib import Path

from relaysync.transfer.moves import MovedAway


def test_gone_files_follow_renames_of_themselves_and_of_directories_above(tmp_path: Path) -> None:
    moved = MovedAway()
    (tmp_path / "kept.txt").write_text("still here: changed, its newer version has its own record")
    for path in ("kept.txt", "build/a.html", "build/sub/b.js", "buildings/c", "x.tmp"):
        moved.gone(tmp_path, path)
    assert len(moved) == 4 and "kept.txt" not in moved
    assert sorted(moved.follow("build", "release-1")) == ["release-1/a.html", "release-1/sub/b.js"]
    assert moved.follow("build", "release-2") == []  # forgotten once followed
    assert moved.follow("x.tmp", "x") == ["x"]
    assert "buildings/c" in moved  # a sibling that only shares the prefix is not under `build`


def test_a_delete_forgets_what_is_at_or_below_it(tmp_path: Path) -> None:
    moved = MovedAway()
    for path in ("d/a", "d/e/b", "d2/c", "d"):
        moved.gone(tmp_path, path)
    moved.forget("d")
    assert len(moved) == 1 and "d2/c" in moved


def test_past_its_bound_it_asks_for_a_comparison(tmp_path: Path) -> None:
    moved = MovedAway(max_paths=2)
    for i in range(3):
        moved.gone(tmp_path, f"f{i}")
    assert len(moved) == 2 and moved.overflowed
