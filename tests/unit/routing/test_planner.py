"""The default tree: one copy per region and group, bounded fan-out, and its invariants."""

from __future__ import annotations

import random
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaysync.routing import Hop, Node, Plan, plan_tree
from tests.unit.routing._plans import SOURCE, assert_tree, grid

# --- Helpers ---


def expected_slots(node: Node, members: list[Node], fanout: int) -> int:
    """The fan-out bound, written out from the spec rather than taken from the planner."""
    mean = sum(m.capacity for m in members) / len(members)
    return max(1, min(2 * fanout, round(fanout * node.capacity / mean)))


def assert_fanout_bound(plan: Plan, source: Node, targets: list[Node], fanout: int) -> None:
    """No node feeds more than its slots (the source: only counting its own group's members)."""
    nodes = {n.node_id: n for n in [source, *targets]}
    load: Counter[str] = Counter()
    for hop in plan.hops:
        child = nodes[hop.child]
        if hop.parent != source.node_id or child.group_key == source.group_key:
            load[hop.parent] += 1
    for node_id, used in load.items():
        node = nodes[node_id]
        members = [n for n in nodes.values() if n.group_key == node.group_key]
        assert used <= expected_slots(node, members, fanout), f"{node_id} feeds {used}"


def group_entries(plan: Plan, source: Node, nodes: list[Node]) -> Counter[tuple[str, str]]:
    """How many hops enter each group from outside it (the source is a member of its own group)."""
    by_id = {n.node_id: n for n in [source, *nodes]}
    entries: Counter[tuple[str, str]] = Counter()
    for hop in plan.hops:
        child = by_id[hop.child].group_key
        if by_id[hop.parent].group_key != child:
            entries[child] += 1
    return entries


# --- The grid network ---


def test_one_copy_per_region_and_per_group() -> None:
    targets = grid(["eu", "us"], ["a", "b"], 2)
    plan = plan_tree(SOURCE, targets)
    assert_tree(plan, SOURCE, targets)
    assert plan.unreachable == ()
    assert [h.child for h in plan.hops if h.parent == SOURCE.node_id] == ["eu-a-1", "us-a-1"]
    assert {h.level for h in plan.hops if h.parent == SOURCE.node_id} == {"region-entry"}
    assert set(group_entries(plan, SOURCE, targets).values()) == {1}
    assert len(group_entries(plan, SOURCE, targets)) == 4
    assert plan.parent_of("eu-b-1") == "eu-a-1"
    assert plan.children_of("eu-b-1") == ("eu-b-2",)
    assert plan.path_to("eu-b-2") == ("src", "eu-a-1", "eu-b-1", "eu-b-2")


def test_source_in_a_region_with_targets_feeds_each_of_its_groups() -> None:
    source = Node("src", "origin", "eu", "core")
    targets = grid(["eu", "us"], ["a", "b"], 2)
    plan = plan_tree(source, targets)
    assert_tree(plan, source, targets)
    first = {h.child: h.level for h in plan.hops if h.parent == "src"}
    assert first == {"eu-a-1": "group-entry", "eu-b-1": "group-entry", "us-a-1": "region-entry"}
    assert set(group_entries(plan, source, targets).values()) == {1}


def test_source_fans_out_inside_its_own_group() -> None:
    source = Node("src", "origin", "eu", "a")
    targets = grid(["eu", "us"], ["a", "b"], 2)
    plan = plan_tree(source, targets)
    assert_tree(plan, source, targets)
    first = {h.child: h.level for h in plan.hops if h.parent == "src"}
    assert first == {
        "eu-a-1": "in-group",
        "eu-a-2": "in-group",
        "eu-b-1": "group-entry",
        "us-a-1": "region-entry",
    }


def test_fanout_bound_weighted_by_capacity() -> None:
    targets = [Node(f"n{i}", f"n{i:02}", "eu", "a", capacity=1 + i % 4) for i in range(30)]
    plan = plan_tree(SOURCE, targets, fanout=3)
    assert_tree(plan, SOURCE, targets)
    assert_fanout_bound(plan, SOURCE, targets, fanout=3)
    # The biggest node enters the group, and bigger nodes feed more children.
    assert plan.hops[0] == Hop("src", "n3", "region-entry")
    assert len(plan.children_of("n3")) == expected_slots(targets[3], targets, 3) == 5
    assert len(plan.children_of("n7")) > len(plan.children_of("n4"))


def test_group_entries_leave_the_region_entry_a_slot_for_its_group() -> None:
    # fanout 1: the region entry could feed only one child; it must be its own group's member.
    targets = grid(["eu"], ["a", "b", "c"], 2)
    plan = plan_tree(SOURCE, targets, fanout=1)
    assert_tree(plan, SOURCE, targets)
    assert {h.level for h in plan.hops} == {"region-entry", "group-entry", "in-group"}
    assert_fanout_bound(plan, SOURCE, targets, fanout=1)
    assert set(group_entries(plan, SOURCE, targets).values()) == {1}


def test_order_regions_groups_members() -> None:
    source = Node("src", "origin", "us", "b")
    targets = [
        Node("x", "zed", "eu", "a", 1),
        Node("y", "amy", "us", "a", 1),
        Node("z", "bob", "us", "b", 1),
        Node("w", "cat", "us", "b", 2),
    ]
    plan = plan_tree(source, targets)
    assert [h.child for h in plan.hops] == ["y", "w", "z", "x"]
    assert plan.hops[1] == Hop("src", "w", "in-group")  # capacity first, then name


def test_same_input_same_plan_whatever_the_target_order() -> None:
    targets = grid(["eu", "us", "ap"], ["a", "b"], 3)
    shuffled = list(targets)
    random.Random(7).shuffle(shuffled)
    failed = frozenset({("src", "eu-a-1"), ("us-a-1", "us-b-1")})
    assert plan_tree(SOURCE, targets, failed_hops=failed) == plan_tree(
        SOURCE, shuffled, failed_hops=failed
    )


def test_source_and_repeated_targets_are_ignored() -> None:
    targets = grid(["eu"], ["a"], 2)
    plan = plan_tree(SOURCE, [SOURCE, *targets, targets[0]])
    assert [h.child for h in plan.hops] == ["eu-a-1", "eu-a-2"]


def test_down_targets_are_unreachable_and_down_source_reaches_nothing() -> None:
    targets = grid(["eu"], ["a"], 3)
    plan = plan_tree(SOURCE, targets, down={"eu-a-1"})
    assert plan.unreachable == ("eu-a-1",)
    assert plan.hops[0] == Hop("src", "eu-a-2", "region-entry")
    dead = plan_tree(SOURCE, targets, down={"src"})
    assert dead.hops == () and dead.unreachable == ("eu-a-1", "eu-a-2", "eu-a-3")


def test_no_targets_and_bad_input() -> None:
    assert plan_tree(SOURCE, []) == Plan("src", (), ())
    with pytest.raises(ValueError, match="fanout"):
        plan_tree(SOURCE, [], fanout=0)
    with pytest.raises(ValueError, match="capacity"):
        Node("n", "n", "eu", "a", capacity=0)


def test_plan_refuses_hops_that_are_not_a_tree() -> None:
    with pytest.raises(ValueError, match="not placed before"):
        Plan("s", (Hop("a", "b", "in-group"), Hop("s", "a", "region-entry")), ())
    with pytest.raises(ValueError, match="twice"):
        Plan("s", (Hop("s", "a", "direct"), Hop("s", "a", "direct")), ())
    with pytest.raises(ValueError, match="level"):
        Plan("s", (Hop("s", "a", "sideways"),), ())


def test_plan_lookups() -> None:
    plan = Plan("s", (Hop("s", "a", "region-entry"), Hop("a", "b", "in-group")), ("c",))
    assert plan.parent_of("s") is None and plan.parent_of("c") is None
    assert plan.children_of("s") == ("a",) and plan.children_of("b") == ()
    assert plan.path_to("s") == ("s",)
    assert plan.path_to("c") == ()


# --- Property tests ---


@st.composite
def topologies(draw: st.DrawFn) -> tuple[Node, list[Node]]:
    """1-4 regions x 1-3 groups x 1-6 servers with random capacities, and a source placed anywhere."""
    nodes = []
    regions = [f"r{r}" for r in range(draw(st.integers(1, 4)))]
    for region in regions:
        for g in range(draw(st.integers(1, 3))):
            for i in range(draw(st.integers(1, 6))):
                capacity = draw(st.integers(1, 5))
                name = draw(st.sampled_from(["web", "cdn", "app"])) + f"-{region}-{g}-{i}"
                nodes.append(Node(f"{region}.g{g}.{i}", name, region, f"g{g}", capacity))
    source = Node(
        "src",
        "origin",
        draw(st.sampled_from([*regions, "hq"])),
        draw(st.sampled_from(["g0", "g1", "core"])),
        draw(st.integers(1, 5)),
    )
    return source, nodes


def draw_failures(
    data: st.DataObject, source: Node, nodes: list[Node]
) -> tuple[frozenset[str], frozenset[tuple[str, str]]]:
    ids = [n.node_id for n in nodes]
    down = data.draw(st.frozensets(st.sampled_from(ids), max_size=len(ids) // 2))
    rate = data.draw(st.sampled_from([0.0, 0.05, 0.2, 0.5, 0.9]))
    rng = data.draw(st.randoms(use_true_random=False))
    everyone = [source.node_id, *ids]
    failed = frozenset((p, c) for p in everyone for c in ids if p != c and rng.random() < rate)
    return down, failed


@settings(max_examples=150, deadline=None)
@given(topologies(), st.integers(1, 5), st.data())
def test_any_failures_still_give_a_tree(
    topology: tuple[Node, list[Node]], fanout: int, data: st.DataObject
) -> None:
    source, nodes = topology
    down, failed = draw_failures(data, source, nodes)
    plan = plan_tree(source, nodes, fanout=fanout, down=down, failed_hops=failed)
    assert_tree(plan, source, nodes, down=down, failed_hops=failed)
    assert plan == plan_tree(
        source, list(reversed(nodes)), fanout=fanout, down=down, failed_hops=failed
    )


@settings(max_examples=150, deadline=None)
@given(topologies(), st.integers(1, 5), st.data())
def test_down_nodes_only_cost_themselves(
    topology: tuple[Node, list[Node]], fanout: int, data: st.DataObject
) -> None:
    source, nodes = topology
    down = data.draw(st.frozensets(st.sampled_from([n.node_id for n in nodes])))
    plan = plan_tree(source, nodes, fanout=fanout, down=down)
    assert_tree(plan, source, nodes, down=down)
    assert set(plan.unreachable) == down  # the source can always reach a live node directly


@settings(max_examples=150, deadline=None)
@given(topologies(), st.integers(1, 5))
def test_without_failures_the_grid_holds(topology: tuple[Node, list[Node]], fanout: int) -> None:
    source, nodes = topology
    plan = plan_tree(source, nodes, fanout=fanout)
    assert_tree(plan, source, nodes)
    assert plan.unreachable == ()
    assert {h.level for h in plan.hops} <= {"region-entry", "group-entry", "in-group"}
    assert_fanout_bound(plan, source, nodes, fanout)
    regions = {n.region for n in nodes} - {source.region}
    own_groups = {n.group_key for n in nodes if n.region == source.region} - {source.group_key}
    from_source = [h for h in plan.hops if h.parent == source.node_id and h.level != "in-group"]
    assert len(from_source) == len(regions) + len(own_groups)
    entries = group_entries(plan, source, nodes)
    assert all(entries[g] == 1 for g in {n.group_key for n in nodes} - {source.group_key})
    assert entries[source.group_key] == 0
