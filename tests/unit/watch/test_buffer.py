"""Tests for watch.buffer.coalesce."""

from __future__ import annotations

from relaysync.watch._fsevent import FsEvent
from relaysync.watch.buffer import coalesce


def ev(kind: str, path: str, new_path: str = "") -> FsEvent:
    return FsEvent(kind=kind, path=path, new_path=new_path)  # type: ignore[arg-type]


def test_repeated_writes_become_one() -> None:
    events = [ev("write", "a"), ev("write", "b"), ev("write", "a"), ev("attr", "a")]
    assert coalesce(events) == [ev("write", "a"), ev("write", "b"), ev("attr", "a")]


def test_delete_and_move_end_the_cover() -> None:
    events = [ev("write", "a"), ev("delete", "a"), ev("write", "a")]
    assert coalesce(events) == events
    events = [ev("write", "a/x"), ev("move", "a", "b"), ev("write", "a/x")]
    assert coalesce(events) == events


def test_rescan_covers_later_events_below_it() -> None:
    events = [
        ev("rescan", "d"),
        ev("write", "d/x"),
        ev("rescan", "d/e"),
        ev("write", "e"),
        ev("rescan", "d"),
    ]
    assert coalesce(events) == [ev("rescan", "d"), ev("write", "e")]
    assert coalesce([ev("rescan", ""), ev("write", "a/b")]) == [ev("rescan", "")]


def test_empty_and_order_kept() -> None:
    assert coalesce([]) == []
    events = [ev("write", "c"), ev("write", "a"), ev("write", "b")]
    assert coalesce(events) == events
