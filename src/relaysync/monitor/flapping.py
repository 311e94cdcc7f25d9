"""The notice limiter: at most one fire and one resolve notice per alert key per window, so a
flapping probe or threshold does not flood the channels; a change held back goes out once its
state has settled, and the changes held back are summarised in the next notice ("flapping: N
changes not notified in the last M min").

A held change is due when its state has stayed unchanged for the settle time (`settle_s`) or,
for a key still flapping, when the window ends; either way only if its state differs from the
last one notified. So a blip followed by a real outage is notified `settle_s` after the outage
began, not at the window's end. Bound: after the window's pair, each notice sent early needs a
change after the previous notice and `settle_s` of quiet after that change, so a window of
`window_s` holds at most NOTICES_PER_WINDOW + ceil(window_s / settle_s) - 1 notices (6 with the
defaults: the pair and 4 settled changes, each of them a state that held 2 min).

Pure logic: the caller supplies the time, on a monotonic clock (windows and settle times are
durations: on a wall clock stepped by NTP they end early or last until it catches up), sends what
`admit` and `due` return, calls `due` often (the monitor does each tick, every 10 s by default:
a settled notice is up to a tick late), and still records every change in the alert log and on
the event bus.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from relaysync.monitor.alerts import Notice

NOTICE_WINDOW_S = 600.0  # per alert key, at most one fire/resolve pair of notices this often
NOTICES_PER_WINDOW = 2  # the pair
# A held change unchanged this long is notified before the window ends. 2 min outlasts a blip
# (a service or link restart, seen for a tick or a few at the monitor's 10 s interval), so a key
# flapping faster stays held; it is 12 ticks, so the tick adds little to it; and it is a fifth
# of the window, so at most 4 notices more per window (see the module docstring).
NOTICE_SETTLE_S = 120.0


@dataclass
class _KeyNotices:
    window_start: float
    rule_since: float = 0.0  # the created_at of the rule or probe behind the key
    sent: int = 0  # notices sent in this window
    sent_state: str = ""  # the state of the last notice sent
    sent_at: float = 0.0
    changes: int = 0  # changes held back since the last notice sent
    held: Notice | None = None  # the newest of them
    held_at: float = 0.0  # when it was held: the key has not changed since


class NoticeLimiter:
    """Per alert key: which notices go out now, which are held back, and which are due later."""

    def __init__(
        self, window_s: float = NOTICE_WINDOW_S, settle_s: float = NOTICE_SETTLE_S
    ) -> None:
        """Start with no key held.

        Args:
            window_s: the window in which a key gets NOTICES_PER_WINDOW notices at once.
            settle_s: how long a held change must stay unchanged to be sent before the window
                ends.

        Raises:
            ValueError: `settle_s` is not positive or not shorter than `window_s`.
        """
        if not 0 < settle_s < window_s:
            raise ValueError(
                f"notice settle time {settle_s:g} s: must be > 0 and < the window {window_s:g} s"
            )
        self.window_s, self.settle_s = window_s, settle_s
        self._by_key: dict[str, _KeyNotices] = {}

    def admit(
        self, key: str, notice: Notice, now: float, *, rule_since: float = 0.0
    ) -> Notice | None:
        """Return the notice to send now (with a summary of the changes held back), or None if
        the key used up its window: the notice is held, and `due` sends it if still current.

        Args:
            rule_since: the created_at of the rule or probe behind `key`: a store may give a new
                rule the id of one deleted, hence its key, and the new rule starts afresh.
        """
        st = self._by_key.get(key)
        if st is not None and st.rule_since != rule_since:
            st = None
        if st is None or now - st.window_start >= self.window_s:
            st = self._by_key[key] = _restart(st, now)
            st.rule_since = rule_since
        if st.sent < NOTICES_PER_WINDOW:
            return self._send(st, notice, now)
        st.changes, st.held, st.held_at = st.changes + 1, notice, now
        return None

    def due(self, now: float) -> list[Notice]:
        """Return the held notices whose state differs from the last one sent and either stayed
        unchanged for `settle_s` (sent within the window) or whose window ended (an alert left
        firing, or left resolved, after flapping); forget idle keys."""
        out: list[Notice] = []
        for key, st in list(self._by_key.items()):
            if now - st.window_start >= self.window_s:
                self._end_window(key, st, now, out)
            elif (held := st.held) is not None and self._settled(st, held, now):
                out.append(self._send(st, held, now))  # counted in this window
        return out

    def retain(self, keys: set[str]) -> None:
        """Forget the keys not in `keys` (rules, probes, servers gone)."""
        for key in [k for k in self._by_key if k not in keys]:
            del self._by_key[key]

    def _end_window(self, key: str, st: _KeyNotices, now: float, out: list[Notice]) -> None:
        if st.held is not None and st.held.state != st.sent_state:
            held, self._by_key[key] = st.held, _restart(st, now)
            out.append(self._send(self._by_key[key], held, now))
        elif st.changes == 0:
            del self._by_key[key]
        else:  # back to the state last notified: the count goes in the next notice
            st.held = None

    def _settled(self, st: _KeyNotices, held: Notice, now: float) -> bool:
        """Whether `held` differs from the last notice sent and the key stayed so `settle_s`."""
        return held.state != st.sent_state and now - st.held_at >= self.settle_s

    def _send(self, st: _KeyNotices, notice: Notice, now: float) -> Notice:
        if st.changes:
            minutes = max(1, round((now - st.sent_at) / 60))
            plural = "s" if st.changes > 1 else ""
            notice = dataclasses.replace(
                notice,
                message=f"{notice.message}; flapping: {st.changes} change{plural} not notified"
                f" in the last {minutes} min",
            )
        st.sent += 1
        st.sent_state, st.sent_at, st.changes, st.held = notice.state, now, 0, None
        return notice


def _restart(old: _KeyNotices | None, now: float) -> _KeyNotices:
    """A new window from `now`, carrying over the rule, what was last sent and the changes held
    back. The rule too: a window `due` restarts, if it lost it, made the key's next change look
    like a new rule's, starting yet another window with a pair of notices more."""
    if old is None:
        return _KeyNotices(window_start=now)
    return _KeyNotices(
        window_start=now,
        rule_since=old.rule_since,
        sent_state=old.sent_state,
        sent_at=old.sent_at,
        changes=old.changes,
    )
