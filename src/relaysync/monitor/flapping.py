"""The notice limiter: at most one fire and one resolve notice per alert key per window, so a
flapping probe or threshold does not flood the channels; the changes held back are summarised in
the next notice ("flapping: N changes not notified in the last M min").

Pure logic: the caller supplies the time, sends what `admit` and `due` return, and still records
every change in the alert log and on the event bus.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from relaysync.monitor.alerts import Notice

NOTICE_WINDOW_S = 600.0  # per alert key, at most one fire/resolve pair of notices this often
NOTICES_PER_WINDOW = 2  # the pair


@dataclass
class _KeyNotices:
    window_start: float
    rule_since: float = 0.0  # the created_at of the rule or probe behind the key
    sent: int = 0  # notices sent in this window
    sent_state: str = ""  # the state of the last notice sent
    sent_at: float = 0.0
    changes: int = 0  # changes held back since the last notice sent
    held: Notice | None = None  # the newest of them


class NoticeLimiter:
    """Per alert key: which notices go out now, which are held back, and which are due later."""

    def __init__(self, window_s: float = NOTICE_WINDOW_S) -> None:
        self.window_s = window_s
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
        st.changes, st.held = st.changes + 1, notice
        return None

    def due(self, now: float) -> list[Notice]:
        """Return the held notices whose window ended and whose state differs from the last one
        sent (an alert left firing, or left resolved, after flapping); forget idle keys."""
        out = []
        for key, st in list(self._by_key.items()):
            if now - st.window_start < self.window_s:
                continue
            if st.held is not None and st.held.state != st.sent_state:
                held, self._by_key[key] = st.held, _restart(st, now)
                out.append(self._send(self._by_key[key], held, now))
            elif st.changes == 0:
                del self._by_key[key]
            else:  # back to the state last notified: the count goes in the next notice
                st.held = None
        return out

    def retain(self, keys: set[str]) -> None:
        """Forget the keys not in `keys` (rules, probes, servers gone)."""
        for key in [k for k in self._by_key if k not in keys]:
            del self._by_key[key]

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
    """A new window from `now`, carrying over what was last sent and the changes held back."""
    if old is None:
        return _KeyNotices(window_start=now)
    return _KeyNotices(
        window_start=now, sent_state=old.sent_state, sent_at=old.sent_at, changes=old.changes
    )
