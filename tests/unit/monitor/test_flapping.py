"""The notice limiter: one fire/resolve pair per alert key per window, a held change sent once
settled, the rest summarised."""

from __future__ import annotations

import math
from types import SimpleNamespace

import pytest

from relaysync.monitor.alerts import Notice
from relaysync.monitor.engine import MonitorService
from relaysync.monitor.flapping import NOTICE_SETTLE_S, NOTICES_PER_WINDOW, NoticeLimiter

WINDOW_S = 600.0
SETTLE_S = 120.0


def _notice(state: str) -> Notice:
    return Notice(
        alert_id=1, server="web1", metric="load", value=None, state=state, message="m", at=0
    )


def test_a_pair_passes_and_later_changes_are_held() -> None:
    limiter = NoticeLimiter(WINDOW_S, SETTLE_S)
    assert limiter.admit("k", _notice("firing"), 0) is not None
    assert limiter.admit("k", _notice("resolved"), 1) is not None
    assert limiter.admit("k", _notice("firing"), 2) is None
    assert limiter.admit("other", _notice("firing"), 2) is not None  # per key
    assert limiter.due(2 + SETTLE_S - 1) == []  # held until settled (or the window ends)


def test_a_state_left_changed_is_sent_when_the_window_ends_with_a_summary() -> None:
    limiter = NoticeLimiter(WINDOW_S, SETTLE_S)
    for t, state in enumerate(["firing", "resolved", "firing", "resolved", "firing"]):
        limiter.admit("k", _notice(state), t)
    (due,) = limiter.due(WINDOW_S)
    assert due.state == "firing"
    assert due.message == "m; flapping: 3 changes not notified in the last 10 min"
    assert limiter.due(WINDOW_S + 1) == []


def test_a_state_back_to_the_one_notified_waits_for_the_next_notice() -> None:
    limiter = NoticeLimiter(WINDOW_S, SETTLE_S)
    for t, state in enumerate(["firing", "resolved", "firing", "resolved"]):
        limiter.admit("k", _notice(state), t)
    assert limiter.due(WINDOW_S) == []
    sent = limiter.admit("k", _notice("firing"), 2 * WINDOW_S)
    assert sent is not None and "flapping: 2 changes" in sent.message
    assert limiter.admit("k", _notice("resolved"), 2 * WINDOW_S + 1) is not None
    assert limiter.due(4 * WINDOW_S) == [] and limiter.due(4 * WINDOW_S) == []


def test_a_key_no_longer_checked_starts_afresh() -> None:
    """A deleted rule's id (hence its key) may be given to a new rule: its first notice goes out."""
    limiter = NoticeLimiter(WINDOW_S, SETTLE_S)
    limiter.admit("k", _notice("firing"), 0)
    limiter.admit("k", _notice("resolved"), 1)
    limiter.retain(set())
    assert limiter.admit("k", _notice("firing"), 2) is not None


def test_a_new_rule_under_a_reused_key_starts_afresh() -> None:
    """Deleted and created again between two ticks, with the same id: a new rule's notices."""
    limiter = NoticeLimiter(WINDOW_S, SETTLE_S)
    limiter.admit("k", _notice("firing"), 0, rule_since=100)
    limiter.admit("k", _notice("resolved"), 1, rule_since=100)
    assert limiter.admit("k", _notice("firing"), 2, rule_since=100) is None
    assert limiter.admit("k", _notice("firing"), 3, rule_since=200) is not None


def _flip(state: str) -> str:
    return "resolved" if state == "firing" else "firing"


def test_a_real_outage_after_a_blip_is_sent_once_settled() -> None:
    """Down at 0, up at 30 (the blip's pair), down at 60 and staying down: the fire goes out
    SETTLE_S after it was held, not when the window ends, with the summary."""
    limiter = NoticeLimiter(WINDOW_S, SETTLE_S)
    assert limiter.admit("k", _notice("firing"), 0) is not None
    assert limiter.admit("k", _notice("resolved"), 30) is not None
    assert limiter.admit("k", _notice("firing"), 60) is None
    assert limiter.due(60 + SETTLE_S - 1) == []
    (due,) = limiter.due(60 + SETTLE_S)
    assert due.state == "firing"
    assert due.message == "m; flapping: 1 change not notified in the last 2 min"
    assert limiter.due(WINDOW_S) == [] and limiter.due(2 * WINDOW_S) == []


def test_a_key_flapping_faster_than_the_settle_time_is_held_until_the_window_ends() -> None:
    """A change every 30 s, up to 540 s (firing): nothing before the window ends, at each 10 s
    tick; then the newest change, with the count."""
    limiter = NoticeLimiter(WINDOW_S, SETTLE_S)
    state = "resolved"
    for t in range(0, int(WINDOW_S), 10):
        if t % 30 == 0 and t <= 540:
            state = _flip(state)
            limiter.admit("k", _notice(state), t)
        assert limiter.due(t) == [], t
    (due,) = limiter.due(WINDOW_S)
    assert due.state == "firing"
    assert due.message == "m; flapping: 17 changes not notified in the last 10 min"


def test_a_held_change_back_to_the_state_notified_is_not_sent() -> None:
    """Settled, but in the state last notified: not sent, early or when the window ends; its
    count goes in the key's next notice."""
    limiter = NoticeLimiter(WINDOW_S, SETTLE_S)
    for t, state in [(0, "firing"), (10, "resolved"), (20, "firing"), (30, "resolved")]:
        limiter.admit("k", _notice(state), t)
    assert limiter.due(30 + SETTLE_S) == [] and limiter.due(WINDOW_S - 1) == []
    assert limiter.due(WINDOW_S) == []
    sent = limiter.admit("k", _notice("firing"), WINDOW_S + 1)
    assert sent is not None and "flapping: 2 changes" in sent.message


def test_notices_per_window_are_bounded_by_the_settle_time() -> None:
    """A key that changes again as soon as its last change went out: the pair at once, then one
    notice per SETTLE_S at most, so NOTICES_PER_WINDOW + ceil(window / settle) - 1 in a window
    (6); the change held at the end goes out with the window's end, in the next window."""
    limiter = NoticeLimiter(WINDOW_S, SETTLE_S)
    sent: list[int] = []
    state, held = "resolved", False
    for t in range(0, int(WINDOW_S), 10):  # the monitor's ticks
        due = limiter.due(t)
        sent += [t] * len(due)
        if due or not held:
            state = _flip(state)
            held = limiter.admit("k", _notice(state), t) is None
            sent += [] if held else [t]
    assert len(sent) == NOTICES_PER_WINDOW + math.ceil(WINDOW_S / SETTLE_S) - 1
    assert sent == [0, 10, 140, 260, 380, 500]
    (due,) = limiter.due(WINDOW_S)  # held at 500, not settled by 600
    assert due.state == state


def test_the_settle_time_is_shorter_than_the_window() -> None:
    with pytest.raises(ValueError, match="settle"):
        NoticeLimiter(WINDOW_S, WINDOW_S)
    with pytest.raises(ValueError, match="settle"):
        NoticeLimiter(WINDOW_S, 0)


def test_a_window_ended_by_a_held_notice_keeps_the_rule() -> None:
    """The notice sent when the window ends counts in the next window for a rule's key too: one
    change more goes out, the next is held (before, the rule was lost with the window, and the
    next change started a new rule's window: two more at once)."""
    limiter = NoticeLimiter(WINDOW_S, SETTLE_S)
    for t, state in [(0, "firing"), (1, "resolved"), (2, "firing")]:
        limiter.admit("k", _notice(state), t, rule_since=100)
    (due,) = limiter.due(WINDOW_S)
    assert due.state == "firing"
    assert limiter.admit("k", _notice("resolved"), WINDOW_S + 10, rule_since=100) is not None
    assert limiter.admit("k", _notice("firing"), WINDOW_S + 20, rule_since=100) is None


def test_a_monitor_with_a_short_window_settles_in_a_fifth_of_it() -> None:
    """A window of 2 min or less with no settle time given raised (the settle time must be
    shorter than the window); the default is the smaller of 2 min and a fifth of the window."""
    store = SimpleNamespace(monitoring=SimpleNamespace(list_channels=list))  # not read when built
    short = MonitorService(
        store=store,  # type: ignore[arg-type]
        publish=lambda kind, data: None,
        links_up=set,
        self_figures=list,
        notice_window_s=60.0,
    )
    assert short.limiter.settle_s == 12.0
    default = MonitorService(
        store=store,  # type: ignore[arg-type]
        publish=lambda kind, data: None,
        links_up=set,
        self_figures=list,
    )
    assert default.limiter.settle_s == NOTICE_SETTLE_S
