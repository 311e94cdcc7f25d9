"""Topology order and fan-out slots."""

from __future__ import annotations

from relaysync.routing.topology import Node, arrange, fanout_slots, slot_table


def test_arrange_puts_the_source_region_and_group_first_then_names() -> None:
    source = Node("s", "origin", "us", "web")
    targets = [
        Node("1", "b", "ap", "x"),
        Node("2", "a", "us", "api"),
        Node("3", "c", "us", "web", 1),
        Node("4", "d", "us", "web", 3),
        Node("5", "e", "eu", "x"),
        source,
    ]
    regions = arrange(source, targets)
    assert [r.name for r in regions] == ["us", "ap", "eu"]
    assert [g.name for g in regions[0].groups] == ["web", "api"]
    assert [n.node_id for n in regions[0].members] == ["4", "3", "2"]


def test_slots_follow_capacity_within_bounds() -> None:
    group = [Node(str(c), str(c), "eu", "a", c) for c in (1, 2, 3, 10)]  # mean 4
    assert slot_table(group, 4) == {"1": 1, "2": 2, "3": 3, "10": 8}
    assert fanout_slots(group[0], 100.0, 4) == 1  # a weak node still relays
    alone = Node("x", "x", "us", "b", 7)
    assert slot_table([*group, alone], 4)["x"] == 4  # weighed against its own group only
