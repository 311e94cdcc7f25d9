"""Thresholds: conditions that must hold for a while to fire, and clear past a hysteresis band.

A `Condition` is tracked per alert key (one threshold on one server, one probe, one heartbeat).
It fires once when its bad state has lasted `for_s`, stays firing (no repeat) until its clear
state is reached, then resolves once. Pure logic: the caller supplies the time, from a monotonic
clock (the monitor passes time.monotonic()): `for_s` is a duration, and on the wall clock a step
forward (NTP) fired every condition that had just turned bad.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from relaysync.errors import ConfigError
from relaysync.monitor.types import Operator, ThresholdRule
from relaysync.protocol.messages import MetricSample


class Transition(enum.Enum):
    FIRE = "fire"
    RESOLVE = "resolve"


def breached(operator: Operator, value: float, limit: float) -> bool:
    """Return whether `value operator limit` holds."""
    match operator:
        case ">":
            return value > limit
        case ">=":
            return value >= limit
        case "<":
            return value < limit
        case "<=":
            return value <= limit
        case "==":
            return value == limit
        case "!=":
            return value != limit
    raise ConfigError(f"unknown threshold operator {operator!r}")


def cleared(operator: Operator, value: float, limit: float, hysteresis: float) -> bool:
    """Return whether `value` is back past the limit by the hysteresis band (to resolve)."""
    match operator:
        case ">" | ">=":
            return (
                value <= limit - hysteresis if hysteresis else not breached(operator, value, limit)
            )
        case "<" | "<=":
            return (
                value >= limit + hysteresis if hysteresis else not breached(operator, value, limit)
            )
    return not breached(operator, value, limit)


def worst(operator: Operator, values: Iterable[float]) -> float | None:
    """Return the value of a labelled series that matters: the highest for > and >=, else the lowest."""
    seq = list(values)
    if not seq:
        return None
    return max(seq) if operator in (">", ">=", "==", "!=") else min(seq)


def value_for(rule: ThresholdRule, samples: Sequence[MetricSample]) -> float | None:
    """Return the figure a rule checks in one report (the worst of its labelled series)."""
    return worst(rule.operator, (s.value for s in samples if s.name == rule.metric))


def applies_to(rule: ThresholdRule, server: str, group: str) -> bool:
    """Return whether a rule covers `server` (scope all, its name, or its group)."""
    if not rule.enabled:
        return False
    match rule.scope:
        case "all":
            return True
        case "server":
            return rule.target == server
        case "group":
            return rule.target == group
    return False


@dataclass
class Condition:
    """The state of one alert key between ticks."""

    for_s: float = 0.0
    bad_since: float | None = None
    firing: bool = False

    def update(self, *, bad: bool, clear: bool, now: float) -> Transition | None:
        """Feed one observation; returns FIRE or RESOLVE on a change of state, else None."""
        if self.firing:
            if clear:
                self.firing, self.bad_since = False, None
                return Transition.RESOLVE
            return None
        if not bad:
            self.bad_since = None
            return None
        if self.bad_since is None:
            self.bad_since = now
        if now - self.bad_since >= self.for_s:
            self.firing = True
            return Transition.FIRE
        return None


class Conditions:
    """Every tracked alert key's Condition; keys no longer observed are forgotten by prune()."""

    def __init__(self) -> None:
        self._by_key: dict[str, Condition] = {}

    def get(self, key: str, for_s: float, *, firing: bool = False) -> Condition:
        cond = self._by_key.get(key)
        if cond is None:
            cond = self._by_key[key] = Condition(for_s=for_s, firing=firing)
        cond.for_s = for_s
        return cond

    def update(
        self, key: str, *, for_s: float, bad: bool, clear: bool, now: float
    ) -> Transition | None:
        return self.get(key, for_s).update(bad=bad, clear=clear, now=now)

    def firing_keys(self) -> set[str]:
        return {k for k, c in self._by_key.items() if c.firing}

    def prune(self, keep: Mapping[str, object] | set[str]) -> list[str]:
        """Drop keys not in `keep`; returns the dropped keys that were firing."""
        dropped = [k for k in self._by_key if k not in keep]
        firing = [k for k in dropped if self._by_key[k].firing]
        for k in dropped:
            del self._by_key[k]
        return firing
