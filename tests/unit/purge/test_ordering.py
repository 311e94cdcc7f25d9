"""Commit ordering: released only when every origin that is up has committed."""

from __future__ import annotations

import logging

import pytest

from relaysync.protocol.messages import CommitRecord
from relaysync.purge.ordering import CommitTracker

O1, O2 = "o1", "o2"
ORIGINS = frozenset({O1, O2})
UP = {O1: "up", O2: "up"}


def _observe(
    t: CommitTracker,
    target: str,
    seq: int,
    states: dict[str, str] = UP,
    now: float = 0.0,
    journal: str = "",
    path: str = "a.txt",
):  # type: ignore[no-untyped-def]
    return t.observe(
        site_id=1,
        mapping_id=1,
        origins=ORIGINS,
        source="s",
        target=target,
        records=[CommitRecord(seq=seq, op="write", path=path)],
        states=states,
        now=now,
        journal_id=journal,
    )


def test_waits_for_every_origin() -> None:
    t = CommitTracker()
    assert _observe(t, O1, 1) == []
    released = _observe(t, O2, 1)
    assert [(r.path, r.again) for r in released] == [("a.txt", False)]


def test_a_down_origin_does_not_hold_back_and_is_refreshed_again_on_return() -> None:
    t = CommitTracker()
    states = {O1: "up", O2: "down"}
    assert len(_observe(t, O1, 1, states)) == 1
    again = _observe(t, O2, 1, UP)
    assert [r.again for r in again] == [True]
    assert _observe(t, O2, 1, UP) == []  # a repeat of the same report changes nothing


def test_sweep_releases_when_an_origin_goes_down_or_after_hold_max() -> None:
    t = CommitTracker(hold_max_s=5.0)
    _observe(t, O1, 1)
    assert t.sweep(UP, now=1.0) == []
    assert len(t.sweep({O1: "up", O2: "down"}, now=1.0)) == 1
    _observe(t, O1, 2)
    assert len(t.sweep(UP, now=6.0)) == 1


def test_failed_records_are_not_commits() -> None:
    t = CommitTracker()
    bad = CommitRecord(seq=1, op="write", path="a.txt", ok=False, error="disk full")
    t.observe(
        site_id=1,
        mapping_id=1,
        origins=ORIGINS,
        source="s",
        target=O1,
        records=[bad],
        states=UP,
        now=0,
    )
    assert _observe(t, O2, 1) == []


def _removal(t: CommitTracker, target: str, kind: str, removed: tuple[str, ...], **kw: object):  # type: ignore[no-untyped-def]
    record = CommitRecord(seq=1, op="delete", path="d", kind=kind, removed=removed, **kw)  # type: ignore[arg-type]
    return t.observe(
        site_id=1,
        mapping_id=1,
        origins=ORIGINS,
        source="s",
        target=target,
        records=[record],
        states=UP,
        now=0,
    )


def test_what_the_origins_removed_is_merged_over_them() -> None:
    t = CommitTracker()
    assert _removal(t, O1, "d", ("d/a",)) == []
    [released] = _removal(t, O2, "f", ("d/b",), removed_truncated=True)
    assert (released.kind, released.removed, released.removed_truncated) == (
        "d",
        ("d/a", "d/b"),
        True,
    )


def test_a_file_on_every_origin_stays_a_file_and_one_silent_origin_makes_it_unknown() -> None:
    t = CommitTracker()
    _removal(t, O1, "f", ())
    assert _removal(t, O2, "f", ())[0].kind == "f"
    t = CommitTracker()
    _removal(t, O1, "d", ("d/a",))
    assert _removal(t, O2, "", ())[0].kind == ""  # an older agent: planned as before


def test_one_change_reported_with_and_without_its_journal_is_released_once_at_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A site whose origins run an upgraded agent (names the journal) and an older one (""):
    keyed by journal too, the change waited under two keys, neither ever complete, and was
    released twice after HOLD_MAX_S with a warning each that the other origin had not
    committed. The same for an outbox report written before its agent's upgrade."""
    caplog.set_level(logging.WARNING, logger="relaysync.purge.ordering")
    for first, second in (("j1", ""), ("", "j1")):
        t = CommitTracker()
        assert _observe(t, O1, 7, journal=first) == []
        released = _observe(t, O2, 7, journal=second)
        assert [(r.path, r.again) for r in released] == [("a.txt", False)]
        assert t.pending == 0 and t.sweep(UP, now=30.0) == []
        assert _observe(t, O1, 7, journal="j1") == []  # replays change nothing
        assert _observe(t, O2, 7) == []
    assert caplog.records == []


def test_an_older_agent_back_up_has_a_change_released_without_it_refreshed_again() -> None:
    t = CommitTracker()
    assert len(_observe(t, O1, 3, {O1: "up", O2: "down"}, journal="j1")) == 1
    assert [r.again for r in _observe(t, O2, 3)] == [True]


def test_another_named_journal_at_a_seq_is_another_change() -> None:
    """A recreated journal counts from 1 again: its change at a released seq is tracked
    afresh; another file's at a seq still waiting waits beside it, each for its own origins;
    the same file's at a waiting seq releases the waiting one at once (its commits are not
    lost) and then waits for every origin itself."""
    t = CommitTracker()
    _observe(t, O1, 1, journal="j1")
    assert len(_observe(t, O2, 1, journal="j1")) == 1
    assert _observe(t, O1, 1, journal="j2", path="b.txt") == []
    assert [r.path for r in _observe(t, O2, 1, journal="j2", path="b.txt")] == ["b.txt"]
    _observe(t, O1, 2, journal="j2", path="c.txt")  # O2 has not committed it yet
    assert _observe(t, O1, 2, journal="j3", path="d.txt") == []
    assert t.pending == 2
    assert [r.path for r in _observe(t, O2, 2, journal="j3", path="d.txt")] == ["d.txt"]
    assert [r.path for r in _observe(t, O2, 2, journal="j2", path="c.txt")] == ["c.txt"]
    _observe(t, O1, 3, journal="j2", path="e.txt")
    assert [r.path for r in _observe(t, O1, 3, journal="j3", path="e.txt")] == ["e.txt"]
    assert t.pending == 1
    assert [r.path for r in _observe(t, O2, 3, journal="j3", path="e.txt")] == ["e.txt"]


def test_a_recreated_journals_change_at_a_seq_released_from_older_agents_is_purged() -> None:
    """Older agents reported seq 5 (/old.html) without a journal; upgraded, with the source's
    journal recreated, seq 5 is /new.html: it was taken for the released change, never purged."""
    t = CommitTracker()
    for target in (O1, O2):
        _observe(t, target, 5, path="/old.html")
    out = [r for o in (O1, O2) for r in _observe(t, o, 5, now=1.0, journal="J2", path="/new.html")]
    assert [(r.path, r.again) for r in out] == [("/new.html", False)]


def test_two_journals_changes_at_one_seq_each_wait_for_their_own_origins() -> None:
    """The journal recreated while origin O2 lags: O1 reports the new journal's /y.html at the
    seq of the old one's /x.html that O2 has not committed; neither is released before both
    origins committed it (each released the other at once)."""
    t = CommitTracker()
    released: list[tuple[float, str]] = []
    for target, path, journal, now in [
        (O1, "/x.html", "J1", 0.0),
        (O1, "/y.html", "J2", 1.0),
        (O2, "/x.html", "J1", 2.0),
        (O2, "/y.html", "J2", 3.0),
    ]:
        out = _observe(t, target, 5, now=now, journal=journal, path=path)
        released += [(now, r.path) for r in out]
    assert released == [(2.0, "/x.html"), (3.0, "/y.html")]
    assert t.sweep(UP, 100.0) == []
