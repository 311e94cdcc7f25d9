"""Observations: what one tick saw of one alert key, and the report clock that tells when an
agent whose link is up has stopped sending figures ("no data"), or one of its series ("series
gone")."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

# An agent whose control link is up but that sent no figures for this many report intervals is
# "no data": its collector died, or the figures are lost on the way.
NO_DATA_AFTER_REPORTS = 3
# Metric names remembered per server (when each was last reported): an agent sending ever new
# names must not grow the master without bound; past this, the least recently reported go.
MAX_METRICS_PER_SERVER = 10_000


@dataclass(frozen=True, slots=True)
class Observation:
    key: str
    for_s: float
    bad: bool
    clear: bool
    server: str
    kind: str
    subject: str
    value: float | None
    message: str
    note: str = ""  # why it resolves, when that is not the figure (kept in the alert's message)
    rule_since: float = 0.0  # the rule's or probe's created_at: tells it from a deleted one's key


class ReportClock:
    """When each server last reported, how far apart its last two reports were, and since when
    its link is up (a server that never reported counts from then).

    Every time given to it (`at`, `now`) is on the master's monotonic clock (time.monotonic()):
    on the wall clock, a step forward (NTP) made every agent look silent for that long at once,
    and "no data" fired and resolved for each.
    """

    def __init__(self) -> None:
        self._last: dict[str, float] = {}
        self._last_regular: dict[str, float] = {}  # the last report not sent early
        self._gap_s: dict[str, float] = {}
        self._up_since: dict[str, float] = {}
        self._first: dict[str, float] = {}
        self._seen: dict[str, dict[str, float]] = {}  # server -> metric -> last report with it

    def reported(
        self, name: str, at: float, metrics: Iterable[str], *, early: bool = False
    ) -> None:
        """Note a report of `metrics` received at `at` (monotonic). The gap is taken
        between regular reports only: an `early` one (sent at once on a change) says nothing
        of the agent's interval, and counted it shortened the silence allowed."""
        last = self._last_regular.get(name)
        if not early:
            if last is not None:
                self._gap_s[name] = at - last
            self._last_regular[name] = at
        self._last[name] = at
        self._first.setdefault(name, at)
        seen = self._seen.setdefault(name, {})
        for metric in metrics:
            seen.pop(metric, None)  # to the end: the dict stays in order of last report
            seen[metric] = at
        while len(seen) > MAX_METRICS_PER_SERVER:  # the least recently reported: "gone" anyway
            del seen[next(iter(seen))]

    def limit_s(self, name: str, interval_s: float) -> float:
        """How long `name` may go without a report (or a series) before it counts as gone."""
        return NO_DATA_AFTER_REPORTS * max(interval_s, self._gap_s.get(name, 0.0))

    def series_gone(self, name: str, metric: str, *, now: float, interval_s: float) -> bool:
        """Return whether `name` goes on reporting but left `metric` out for the time a silent
        agent is given (an unmounted filesystem's usage); a silent agent is no_data's business."""
        limit_s, last = self.limit_s(name, interval_s), self._last.get(name)
        if last is None or now - last > limit_s:
            return False
        return now - self._seen.get(name, {}).get(metric, self._first[name]) > limit_s

    def observe(self, name: str, *, up: bool, now: float, interval_s: float) -> Observation:
        """Return the "no data" observation of `name`: bad once silent for NO_DATA_AFTER_REPORTS
        report intervals (`interval_s`, or its own last gap if longer) while its link is up,
        clear once a report is that fresh. A down link holds the state: the heartbeat says it."""
        limit_s = self.limit_s(name, interval_s)
        if not up:
            self._up_since.pop(name, None)
            self._last_regular.pop(name, None)  # the outage is no gap of its reports
        since = self._up_since.setdefault(name, now) if up else now
        last = self._last.get(name, 0.0)
        return Observation(
            key=f"no_data:{name}",
            for_s=0.0,
            bad=up and now - max(last, since) > limit_s,
            clear=up and now - last <= limit_s,
            server=name,
            kind="no_data",
            subject="no data",
            value=None,
            message=f"agent {name}: link up but no figures for {limit_s:g} s (collector stopped?)",
        )
