"""Shared helpers for the routing tests: topologies and the invariants every plan must keep."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet

from relaysync.routing import LEVELS, Node, Plan

SOURCE = Node("src", "origin", "hq", "core")


def grid(
    regions: Iterable[str], groups: Iterable[str], per_group: int, capacity: int = 1
) -> list[Node]:
    """`per_group` servers in every (region, group), named like `eu-a-1`, id = name."""
    group_names = list(groups)
    return [
        Node(f"{r}-{g}-{i}", f"{r}-{g}-{i}", r, g, capacity)
        for r in regions
        for g in group_names
        for i in range(1, per_group + 1)
    ]


def assert_tree(
    plan: Plan,
    source: Node,
    targets: Sequence[Node],
    *,
    down: AbstractSet[str] = frozenset(),
    failed_hops: AbstractSet[tuple[str, str]] = frozenset(),
) -> None:
    """Every invariant of a plan, whatever failed: a tree from the source over live targets."""
    ids = {t.node_id for t in targets} - {source.node_id}
    children = [h.child for h in plan.hops]
    assert len(children) == len(set(children)), "a node is placed twice"
    assert set(children) <= ids, "a node that is not a target is placed"
    assert not set(children) & set(down), "a down node is placed"
    assert set(children) | set(plan.unreachable) == ids, (
        "a target is neither placed nor unreachable"
    )
    assert not set(children) & set(plan.unreachable)
    assert set(plan.unreachable) >= ids & set(down)
    placed = {source.node_id}
    for hop in plan.hops:
        assert hop.level in LEVELS
        assert hop.parent in placed, f"{hop.parent} feeds {hop.child} before it is placed"
        assert hop.parent not in down
        assert (hop.parent, hop.child) not in failed_hops, f"failed hop {hop} used"
        placed.add(hop.child)
    for child in children:  # parents before children rules out loops; check the paths too
        path = plan.path_to(child)
        assert path[0] == source.node_id and path[-1] == child
        assert len(path) == len(set(path))
