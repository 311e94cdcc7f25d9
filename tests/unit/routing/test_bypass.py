"""The bypass order when a planned hop cannot be used: group, region, other region, source."""

from __future__ import annotations

from relaysync.routing import Hop, Node, Plan, plan_tree
from tests.unit.routing._plans import SOURCE, assert_tree


def n(node_id: str, region: str, group: str, capacity: int = 1) -> Node:
    return Node(node_id, node_id, region, group, capacity)


def hop_into(plan: Plan, child: str) -> Hop:
    return next(h for h in plan.hops if h.child == child)


def plan(
    targets: list[Node], failed: set[tuple[str, str]], down: frozenset[str] = frozenset()
) -> Plan:
    result = plan_tree(SOURCE, targets, failed_hops=frozenset(failed), down=down)
    assert_tree(result, SOURCE, targets, down=down, failed_hops=frozenset(failed))
    return result


def test_same_group_replaces_a_group_entry_and_takes_the_skipped_member() -> None:
    targets = [n("a1", "eu", "a"), n("b1", "eu", "b", 2), n("b2", "eu", "b")]
    result = plan(targets, {("a1", "b1")})
    assert hop_into(result, "b2") == Hop("a1", "b2", "group-entry")  # the next member enters
    assert hop_into(result, "b1") == Hop("b2", "b1", "bypass-same-group")
    assert result.unreachable == ()


def test_same_group_replaces_a_region_entry() -> None:
    targets = [n("a1", "eu", "a", 3), n("a2", "eu", "a", 2), n("a3", "eu", "a")]
    result = plan(targets, {("src", "a1")})
    assert result.hops[0] == Hop("src", "a2", "region-entry")
    assert hop_into(result, "a1") == Hop("a2", "a1", "bypass-same-group")


def test_same_region_feeds_an_exhausted_group() -> None:
    targets = [n("a1", "eu", "a"), n("a2", "eu", "a"), n("b1", "eu", "b"), n("b2", "eu", "b")]
    result = plan(targets, {("a1", "b1"), ("a1", "b2")})
    # a2 has more spare slots than a1, which already feeds a2.
    assert hop_into(result, "b1") == Hop("a2", "b1", "bypass-same-region")
    assert hop_into(result, "b2") == Hop("b1", "b2", "in-group")  # the group fans out as usual


def test_same_region_for_a_member_its_group_cannot_reach() -> None:
    targets = [n("a1", "eu", "a"), n("a2", "eu", "a"), n("b1", "eu", "b")]
    result = plan(targets, {("a1", "a2")})
    assert hop_into(result, "b1") == Hop("a1", "b1", "group-entry")
    assert hop_into(result, "a2") == Hop("b1", "a2", "bypass-same-region")


def test_other_region_feeds_an_exhausted_group() -> None:
    targets = [n("a1", "eu", "a"), n("b1", "eu", "b"), n("c1", "us", "c")]
    result = plan(targets, {("a1", "b1")})
    assert hop_into(result, "b1") == Hop("c1", "b1", "bypass-other-region")


def test_other_region_feeds_a_region_the_source_cannot_reach() -> None:
    targets = [n("a1", "eu", "a"), n("a2", "eu", "a"), n("c1", "us", "c")]
    result = plan(targets, {("src", "a1"), ("src", "a2")})
    assert hop_into(result, "c1") == Hop("src", "c1", "region-entry")
    assert hop_into(result, "a1") == Hop("c1", "a1", "bypass-other-region")
    assert hop_into(result, "a2") == Hop("a1", "a2", "in-group")
    assert [h.child for h in result.hops] == ["c1", "a1", "a2"]  # after the reachable region


def test_direct_from_the_source_when_nothing_else_reaches() -> None:
    targets = [n("a1", "eu", "a"), n("b1", "eu", "b")]
    result = plan(targets, {("a1", "b1")})
    assert hop_into(result, "b1") == Hop("src", "b1", "direct")


def test_a_down_relay_does_not_cut_off_its_group() -> None:
    targets = [n(f"a{i}", "eu", "a") for i in range(1, 8)]
    healthy = plan(targets, set())
    relay = next(
        h.child for h in healthy.hops if h.level == "in-group" and healthy.children_of(h.child)
    )
    result = plan(targets, set(), down=frozenset({relay}))
    assert result.unreachable == (relay,)
    assert all(h.parent != relay for h in result.hops)


def test_unreachable_when_every_hop_fails() -> None:
    targets = [n("a1", "eu", "a"), n("b1", "eu", "b")]
    result = plan(targets, {("a1", "b1"), ("src", "b1")})
    assert result.unreachable == ("b1",)
    assert [h.child for h in result.hops] == ["a1"]
