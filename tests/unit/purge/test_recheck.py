"""The purger's recheck schedule (purge/recheck.py): rounds after a confirm, one per URL and
cache, URLs with work of their own left alone, and a bound on what waits."""

from __future__ import annotations

import pytest

from relaysync.purge.jobs import PurgeItem
from relaysync.purge.recheck import Rechecks


def _item(url: str = "http://h/a", cache: str = "nginx") -> PurgeItem:
    return PurgeItem(site_id=1, cache=cache, url=url)


def _key(item: PurgeItem) -> tuple[int, str, str]:
    return (item.site_id, item.cache, item.url)


def test_rounds_follow_each_other_then_end() -> None:
    r = Rechecks((2.0, 15.0))
    r.confirmed(_item(), 100.0)
    assert r.pop_due(101.9, set()) == ([], 102.0)
    (first,), later = r.pop_due(102.0, set())
    assert (first.round, first.since, later) == (0, 100.0, None)
    r.started(first)
    assert len(r) == 0
    r.passed(first, 102.5)
    (second,), _ = r.pop_due(117.5, set())
    assert (second.round, second.at, second.since) == (1, 117.5, 100.0)
    r.started(second)
    r.passed(second, 118.0)  # the last round
    assert len(r) == 0 and r.pop_due(1e9, set()) == ([], None)


def test_a_newer_confirm_replaces_the_rounds_waiting() -> None:
    r = Rechecks((2.0, 15.0))
    r.confirmed(_item(), 100.0)
    r.confirmed(_item(), 101.0)
    assert r.pop_due(102.5, set()) == ([], 103.0)  # the older one is gone, not due twice
    (due,), _ = r.pop_due(103.0, set())
    assert due.since == 101.0 and len(r) == 1


def test_a_url_with_work_of_its_own_waits_and_one_not_started_is_due_again() -> None:
    r = Rechecks((1.0,))
    a, b = _item("http://h/a"), _item("http://h/b")
    r.confirmed(a, 0.0)
    r.confirmed(b, 0.0)
    due, _ = r.pop_due(5.0, {_key(a)})
    assert [d.item for d in due] == [b]
    r.put_back(due)  # its gate was full
    assert sorted(d.item.url for d in r.pop_due(5.0, set())[0]) == ["http://h/a", "http://h/b"]


def test_no_schedule_means_no_rechecks() -> None:
    r = Rechecks(())
    r.confirmed(_item(), 0.0)
    assert len(r) == 0 and r.pop_due(1e9, set()) == ([], None)


def test_past_the_limit_the_oldest_is_dropped_and_counted() -> None:
    r = Rechecks((1.0,), limit=2)
    for n in range(3):
        r.confirmed(_item(f"http://h/{n}"), float(n))
    assert (len(r), r.dropped) == (2, 1)
    assert [d.item.url for d in r.pop_due(1e9, set())[0]] == ["http://h/1", "http://h/2"]


def test_replaced_entries_do_not_grow_the_heap_without_bound() -> None:
    r = Rechecks((1.0,))
    for n in range(20_000):
        r.confirmed(_item(), float(n))
    assert len(r) == 1 and len(r._heap) <= 2 + 1024 + 1


def test_negative_delays_are_refused() -> None:
    with pytest.raises(ValueError, match=">= 0"):
        Rechecks((1.0, -1.0))
