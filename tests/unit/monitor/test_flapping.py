"""The notice limiter: one fire/resolve pair per alert key per window, the rest summarised."""

from __future__ import annotations

from relaysync.monitor.alerts import Notice
from relaysync.monitor.flapping import NoticeLimiter

WINDOW_S = 600.0


def _notice(state: str) -> Notice:
    return Notice(
        alert_id=1, server="web1", metric="load", value=None, state=state, message="m", at=0
    )


def test_a_pair_passes_and_later_changes_are_held() -> None:
    limiter = NoticeLimiter(WINDOW_S)
    assert limiter.admit("k", _notice("firing"), 0) is not None
    assert limiter.admit("k", _notice("resolved"), 1) is not None
    assert limiter.admit("k", _notice("firing"), 2) is None
    assert limiter.admit("other", _notice("firing"), 2) is not None  # per key
    assert limiter.due(WINDOW_S - 1) == []


def test_a_state_left_changed_is_sent_when_the_window_ends_with_a_summary() -> None:
    limiter = NoticeLimiter(WINDOW_S)
    for t, state in enumerate(["firing", "resolved", "firing", "resolved", "firing"]):
        limiter.admit("k", _notice(state), t)
    (due,) = limiter.due(WINDOW_S)
    assert due.state == "firing"
    assert due.message == "m; flapping: 3 changes not notified in the last 10 min"
    assert limiter.due(WINDOW_S + 1) == []


def test_a_state_back_to_the_one_notified_waits_for_the_next_notice() -> None:
    limiter = NoticeLimiter(WINDOW_S)
    for t, state in enumerate(["firing", "resolved", "firing", "resolved"]):
        limiter.admit("k", _notice(state), t)
    assert limiter.due(WINDOW_S) == []
    sent = limiter.admit("k", _notice("firing"), 2 * WINDOW_S)
    assert sent is not None and "flapping: 2 changes" in sent.message
    assert limiter.admit("k", _notice("resolved"), 2 * WINDOW_S + 1) is not None
    assert limiter.due(4 * WINDOW_S) == [] and limiter.due(4 * WINDOW_S) == []


def test_a_key_no_longer_checked_starts_afresh() -> None:
    """A deleted rule's id (hence its key) may be given to a new rule: its first notice goes out."""
    limiter = NoticeLimiter(WINDOW_S)
    limiter.admit("k", _notice("firing"), 0)
    limiter.admit("k", _notice("resolved"), 1)
    limiter.retain(set())
    assert limiter.admit("k", _notice("firing"), 2) is not None


def test_a_new_rule_under_a_reused_key_starts_afresh() -> None:
    """Deleted and created again between two ticks, with the same id: a new rule's notices."""
    limiter = NoticeLimiter(WINDOW_S)
    limiter.admit("k", _notice("firing"), 0, rule_since=100)
    limiter.admit("k", _notice("resolved"), 1, rule_since=100)
    assert limiter.admit("k", _notice("firing"), 2, rule_since=100) is None
    assert limiter.admit("k", _notice("firing"), 3, rule_since=200) is not None
