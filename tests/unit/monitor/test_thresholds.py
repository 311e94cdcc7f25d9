"""Threshold logic: for-duration, hysteresis, no repeat while firing, scopes."""

from __future__ import annotations

import pytest

from relaysync.monitor.collectors import sample
from relaysync.monitor.thresholds import (
    Condition,
    Conditions,
    Transition,
    applies_to,
    breached,
    cleared,
    value_for,
)
from relaysync.monitor.types import ThresholdRule


def _rule(**kw: object) -> ThresholdRule:
    base: dict[str, object] = {
        "id": 1,
        "scope": "all",
        "target": "",
        "metric": "cpu_percent",
        "operator": ">",
        "value": 80.0,
    }
    base.update(kw)
    return ThresholdRule(**base)  # type: ignore[arg-type]


def test_fires_only_after_for_s_and_once() -> None:
    c = Condition(for_s=5.0)
    assert c.update(bad=True, clear=False, now=100.0) is None
    assert c.update(bad=True, clear=False, now=104.9) is None
    assert c.update(bad=True, clear=False, now=105.0) is Transition.FIRE
    for t in range(106, 200):  # no repeat while it stays firing
        assert c.update(bad=True, clear=False, now=float(t)) is None
    assert c.update(bad=False, clear=True, now=201.0) is Transition.RESOLVE
    assert c.update(bad=False, clear=True, now=202.0) is None


def test_a_blip_shorter_than_for_s_does_not_fire() -> None:
    c = Condition(for_s=5.0)
    c.update(bad=True, clear=False, now=0.0)
    assert c.update(bad=False, clear=True, now=3.0) is None
    assert c.update(bad=True, clear=False, now=4.0) is None
    assert c.update(bad=True, clear=False, now=8.0) is None  # the clock restarted at 4
    assert c.update(bad=True, clear=False, now=9.0) is Transition.FIRE


@pytest.mark.parametrize(
    ("op", "value", "limit", "hyst", "bad", "clear"),
    [
        (">", 85, 80, 5, True, False),
        (">", 78, 80, 5, False, False),  # inside the band: neither fires nor resolves
        (">", 75, 80, 5, False, True),
        (">=", 80, 80, 0, True, False),
        ("<", 5, 10, 2, True, False),
        ("<", 11, 10, 2, False, False),
        ("<", 12, 10, 2, False, True),
        ("==", 0, 0, 0, True, False),
        ("!=", 1, 0, 0, True, False),
    ],
)
def test_operators_and_hysteresis(
    op: str, value: float, limit: float, hyst: float, bad: bool, clear: bool
) -> None:
    assert breached(op, value, limit) is bad  # type: ignore[arg-type]
    assert cleared(op, value, limit, hyst) is clear  # type: ignore[arg-type]


def test_hysteresis_keeps_an_alert_firing_inside_the_band() -> None:
    rule = _rule(hysteresis=10.0)
    conds = Conditions()
    seq = [(90, Transition.FIRE), (79, None), (75, None), (71, None), (70, Transition.RESOLVE)]
    for i, (v, want) in enumerate(seq):
        got = conds.update(
            "k",
            for_s=0,
            bad=breached(">", v, rule.value),
            clear=cleared(">", v, rule.value, rule.hysteresis),
            now=float(i),
        )
        assert got is want, (v, got)


def test_worst_of_labelled_series() -> None:
    samples = [
        sample("disk_used_percent", 40, path="/a"),
        sample("disk_used_percent", 95, path="/b"),
        sample("cpu_percent", 10),
    ]
    assert value_for(_rule(metric="disk_used_percent"), samples) == 95
    assert value_for(_rule(metric="disk_used_percent", operator="<"), samples) == 40
    assert value_for(_rule(metric="absent"), samples) is None


def test_scopes() -> None:
    assert applies_to(_rule(), "a", "g")
    assert applies_to(_rule(scope="server", target="a"), "a", "g")
    assert not applies_to(_rule(scope="server", target="b"), "a", "g")
    assert applies_to(_rule(scope="group", target="g"), "a", "g")
    assert not applies_to(_rule(scope="group", target="h"), "a", "g")
    assert not applies_to(_rule(enabled=False), "a", "g")


def test_prune_reports_firing_keys_dropped() -> None:
    conds = Conditions()
    conds.update("a", for_s=0, bad=True, clear=False, now=0)
    conds.update("b", for_s=0, bad=False, clear=True, now=0)
    assert conds.prune({"b"}) == ["a"]
    assert conds.firing_keys() == set()
