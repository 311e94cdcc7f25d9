"""Per-cache gates of the purger: each cache's share of the workers and its circuit breaker,
so that one hung, down or refusing cache never delays the purges of the others.

A gate lets at most `limit` items of its cache run at once. After `trip_after` failures in a
row to reach the cache, or one refusal (a configuration error), the gate opens: the cache's
backlog waits, and one probe item is let through every probe interval; the first success
closes the gate and the backlog flows again. Only a failed probe doubles the interval: the tries
that were already out when the gate opened fail with it (one outage, or one stall of ours, times
out all of them at once) and say nothing new of the cache.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

TRIP_AFTER = 3  # failures in a row to reach a cache before its gate opens
PROBE_MIN_S = 1.0  # first probe of an open gate after this; doubles per failed probe...
PROBE_MAX_S = 30.0  # ...up to this
REFUSED_PROBE_S = 60.0  # a cache that refuses us (or a bad address) is probed this often


@dataclass
class Slots:
    """The tries of one cache in flight, shared by its gate and the gates that replace it
    (Gate.replaced): taken and freed on the event loop's thread only."""

    in_flight: int = 0


@dataclass
class Gate:
    """One cache (by address): items in flight, and its breaker."""

    limit: int
    trip_after: int = TRIP_AFTER
    probe_min_s: float = PROBE_MIN_S
    probe_max_s: float = PROBE_MAX_S
    refused_probe_s: float = REFUSED_PROBE_S
    failures: int = 0  # to reach the cache, in a row
    refused: str = ""  # the last refusal while the cache refuses us
    probe_at: float = 0.0  # an open gate lets one item through from then
    probes_failed: int = 0  # since the gate opened (each doubles the probe interval)
    probing: bool = False  # the last try admitted was a probe (the gate was open)
    # the hold-ups of our loop (when each began) whose timeouts were not counted since the cache
    # last answered (purge/loop_lag.py)
    excused: frozenset[float] = frozenset()
    slots: Slots = field(default_factory=Slots, repr=False, compare=False)

    @property
    def in_flight(self) -> int:
        return self.slots.in_flight

    @property
    def open(self) -> bool:
        return bool(self.refused) or self.failures >= self.trip_after

    def can_admit(self, now: float) -> bool:
        """Whether one more item of this cache may start now."""
        if self.in_flight >= self.limit:
            return False
        # open: one probe at a time, none while a try from before is still out
        return not self.open or (self.in_flight <= 0 and now >= self.probe_at)

    def admit(self, now: float) -> bool:
        """Take a slot for one more item of this cache if it may start now."""
        if not self.can_admit(now):
            return False
        self.probing = self.open  # (an open gate admits a probe only when no try is out)
        self.slots.in_flight += 1
        return True

    def release(self) -> None:
        """A try ends: its slot is free again (in every gate of the cache: they share it)."""
        self.slots.in_flight -= 1

    def replaced(self) -> Gate:
        """The cache's configuration changed: a fresh gate, breaker closed, sharing the slots.
        The tries in flight free them as they end (a new gate that copied their count stayed
        full for good: the cache never got a slot again); their outcomes go to this gate, not
        to the new one (a refusal or failure under the old configuration says nothing of the
        new)."""
        return replace(
            self,
            failures=0,
            refused="",
            probe_at=0.0,
            probes_failed=0,
            probing=False,
            excused=frozenset(),
        )

    def succeeded(self) -> bool:
        """The cache answered as asked; return whether this closed an open gate."""
        was_open = self.open
        self.failures, self.refused, self.probes_failed = 0, "", 0
        self.excused = frozenset()
        return was_open

    def excuse(self, hold_up: float) -> bool:
        """A timeout our own loop's hold-up spent (`hold_up`: when that began): whether it may
        go uncounted (True). Every timeout one hold-up spent is (16 tries out at once time out
        together); past `trip_after` hold-ups excused since the cache last answered, the next
        ones' count as `unreachable`: a cache really down while the loop keeps stalling still
        opens its gate."""
        if hold_up in self.excused:
            return True
        if len(self.excused) >= self.trip_after:
            return False
        self.excused = self.excused | {hold_up}
        return True

    def unreachable(self, now: float) -> bool:
        """The cache did not connect or answer; return whether this opened the gate.

        The failure that opens the gate sets the first probe probe_min_s later; a failed probe
        doubles that, up to probe_max_s. The failures of tries admitted before the gate opened
        leave it as it is: 16 tries out when one stall timed them all out once pushed the first
        probe to probe_max_s, as if 13 probes had failed."""
        was_open = self.open
        self.failures += 1
        if not was_open and self.open:
            self.probes_failed, self.probing = 0, False
            self.probe_at = now + self.probe_min_s
        elif was_open and self.probing:
            self.probing = False
            self.probes_failed += 1
            doubled = self.probe_min_s * 2**self.probes_failed
            self.probe_at = now + min(self.probe_max_s, doubled)
        return self.open and not was_open

    def refuse(self, now: float, why: str) -> bool:
        """The cache refused us or cannot be addressed; return whether this is news."""
        news = not self.refused
        self.refused = why
        self.probe_at = now + self.refused_probe_s
        return news
