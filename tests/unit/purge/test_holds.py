"""Acknowledgement holds (purge/holds.py) and the job log's read-back purges, alone."""

from __future__ import annotations

import logging
import time

import pytest

from relaysync.master._joblog_parts import ReadBackPurges
from relaysync.protocol.messages import CommitRecord
from relaysync.purge.holds import PurgeHold, Waiters, when_queued
from relaysync.purge.ordering import CommitTracker, Released


def test_a_hold_is_done_once_sealed_and_every_change_it_waits_for_is_queued() -> None:
    hold, calls = PurgeHold(), []
    first, second = Waiters(), Waiters()
    first.add(hold)
    second.add(hold)
    first.add(hold)  # a report naming one change twice waits for it once per name
    when_queued([hold], lambda: calls.append("taken"))
    first.mark_queued()
    hold.seal()
    assert calls == [] and not hold.done
    second.mark_queued()
    assert calls == ["taken"] and hold.done
    second.add(PurgeHold())  # a change queued already holds nothing back
    late = PurgeHold()
    second.add(late)
    late.seal()
    assert late.done


def test_a_failing_callback_does_not_keep_the_others_from_running(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hold, waiters, calls = PurgeHold(), Waiters(), []
    waiters.add(hold)
    hold.seal()

    def broken() -> None:
        raise RuntimeError("bug")

    hold.then(broken)
    hold.then(lambda: calls.append("second"))
    with caplog.at_level(logging.ERROR):
        waiters.mark_queued()
    assert calls == ["second"]
    assert "acknowledgement failed" in caplog.text


def test_when_queued_with_nothing_waiting_calls_at_once() -> None:
    calls: list[str] = []
    done = PurgeHold()
    done.seal()
    when_queued([done], lambda: calls.append("now"))
    assert calls == ["now"]


def test_read_back_reports_leave_the_spool_once_queued_or_after_the_bound(
    caplog: pytest.LogCaptureFixture,
) -> None:
    hold, waiters = PurgeHold(), Waiters()
    waiters.add(hold)
    hold.seal()
    read_back = ReadBackPurges(wait_s=30.0, holds=[hold])
    assert not read_back.queued()
    waiters.mark_queued()
    assert read_back.queued() and read_back.since is None
    stuck = PurgeHold()
    Waiters().add(stuck)
    stuck.seal()
    read_back = ReadBackPurges(wait_s=0.05, holds=[stuck])
    assert not read_back.queued()
    deadline = time.monotonic() + 10.0
    with caplog.at_level(logging.WARNING):
        while not read_back.queued():
            assert time.monotonic() < deadline, "the bound never let the spool go"
    assert "has not queued the purges" in caplog.text
    assert read_back.holds == []


def _report(
    tracker: CommitTracker, target: str, states: dict[str, str], hold: PurgeHold
) -> list[Released]:
    released = tracker.observe(
        site_id=1,
        mapping_id=1,
        origins=frozenset({"o1", "o2"}),
        source="s",
        target=target,
        records=[CommitRecord(seq=1, op="write", path="a.txt")],
        states=states,
        now=0.0,
        journal_id="j",
        hold=hold,
    )
    hold.seal()
    return released


def test_a_report_sent_again_waits_for_the_refresh_its_origins_catching_up_released() -> None:
    """o2 was down when o1's commit released the change (queued since); o2 returns and reports
    it: released again (a cache may have fetched from o2 meanwhile). o2's report sent again
    after a dropped link must wait for that second refresh, not for the first, queued long ago."""
    tracker = CommitTracker()
    (first,) = _report(tracker, "o1", {"o1": "up", "o2": "down"}, PurgeHold())
    first.waiters.mark_queued()
    (again,) = _report(tracker, "o2", {"o1": "up", "o2": "up"}, PurgeHold())
    assert again.again
    resent = PurgeHold()
    assert _report(tracker, "o2", {"o1": "up", "o2": "up"}, resent) == []
    assert not resent.done
    again.waiters.mark_queued()
    assert resent.done


def test_a_forgotten_site_releases_its_waiting_changes_for_the_intake_to_let_go() -> None:
    tracker = CommitTracker()
    hold = PurgeHold()
    assert _report(tracker, "o1", {"o1": "up", "o2": "up"}, hold) == []  # waits for o2
    (gone,) = tracker.forget_site(1)
    assert not hold.done and tracker.pending == 0 and not tracker.has_pending(1)
    gone.waiters.mark_queued()  # the purger's intake, on the loop's thread: no site, no plan
    assert hold.done


def test_what_was_released_before_a_failure_midway_is_kept(monkeypatch: pytest.MonkeyPatch) -> None:
    tracker, out = CommitTracker(), list[Released]()
    real_ready, calls = tracker._ready, []

    def ready(*args: object) -> bool:
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("bug")
        return real_ready(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(tracker, "_ready", ready)
    records = [CommitRecord(seq=s, op="write", path=f"{s}.txt") for s in (1, 2)]
    with pytest.raises(RuntimeError):
        tracker.observe(
            site_id=1,
            mapping_id=1,
            origins=frozenset({"o1"}),
            source="s",
            target="o1",
            records=records,
            states={"o1": "up"},
            now=0.0,
            out=out,
        )
    assert [r.path for r in out] == ["1.txt"]


def _stuck() -> tuple[PurgeHold, Waiters]:
    hold, waiters = PurgeHold(), Waiters()
    waiters.add(hold)
    hold.seal()
    return hold, waiters


def test_once_a_wait_ran_out_the_next_batches_do_not_wait_until_a_purge_is_queued_again() -> None:
    """A purger that does not queue: the first batch waits out the bound, the next ones go at
    once (60 s each would drain the spool slower than reports come); once one of their purges
    is queued (the purger moves again), batches wait for theirs again."""
    read_back = ReadBackPurges(wait_s=0.05, holds=[_stuck()[0]])
    deadline = time.monotonic() + 10.0
    while not read_back.queued():
        assert time.monotonic() < deadline, "the bound never let the spool go"
    assert read_back.lapsed
    read_back.holds = [_stuck()[0]]
    assert read_back.queued()  # at once: nothing was queued since
    moving, waiters = _stuck()
    waiters.mark_queued()
    read_back.holds = [moving, _stuck()[0]]
    assert not read_back.queued() and not read_back.lapsed  # waits again
