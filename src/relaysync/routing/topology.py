"""The fleet topology a route is planned over: nodes, and their Region > Group > Server order.

Routes follow the network: a change crosses into a region once and into a group once, then
spreads inside the group. This module only orders nodes and sizes their fan-out; the trees
themselves are built in planner.py and manual.py.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

GroupKey = tuple[str, str]  # (region, group): group names are only unique inside a region


@dataclass(frozen=True)
class Node:
    """One server as the planner sees it.

    `capacity` is a relative weight (>= 1): a node with twice the group's mean capacity gets twice
    the fan-out slots, so bigger links and machines relay to more children.
    """

    node_id: str
    name: str
    region: str
    group: str
    capacity: int = 1

    def __post_init__(self) -> None:
        if self.capacity < 1:
            raise ValueError(f"node {self.name!r}: capacity must be >= 1, not {self.capacity}")

    @property
    def group_key(self) -> GroupKey:
        """The group's identity across the whole fleet."""
        return (self.region, self.group)


@dataclass(frozen=True)
class Group:
    """The target members of one group, in fan-out order (capacity descending, then name)."""

    region: str
    name: str
    members: tuple[Node, ...]

    @property
    def key(self) -> GroupKey:
        return (self.region, self.name)


@dataclass(frozen=True)
class Region:
    """The groups of one region, the source's group first, then by name."""

    name: str
    groups: tuple[Group, ...]

    @property
    def members(self) -> tuple[Node, ...]:
        """Every member, group by group: the order in which region entries are tried."""
        return tuple(node for group in self.groups for node in group.members)


def member_key(node: Node) -> tuple[int, str, str]:
    """Sort key inside a group: capacity descending, then name (node id breaks the last ties)."""
    return (-node.capacity, node.name, node.node_id)


def unique_targets(source: Node, targets: Iterable[Node]) -> tuple[Node, ...]:
    """The targets without the source and without repeated node ids (the first one wins).

    The source never receives its own changes, and a node listed twice is still one server.
    """
    seen = {source.node_id}
    unique = []
    for node in targets:
        if node.node_id not in seen:
            seen.add(node.node_id)
            unique.append(node)
    return tuple(unique)


def arrange(source: Node, targets: Iterable[Node]) -> tuple[Region, ...]:
    """Group targets by region and group, in the planner's order.

    Regions: the source's region first, then by name. Groups: the source's group first, then by
    name. Members: `member_key`. The order does not depend on the order of `targets`, so the same
    fleet always gives the same plan.

    Args:
        source: the node the changes start from (not itself part of the result).
        targets: the nodes to reach; the source and repeated ids are dropped.

    Returns:
        One `Region` per region that has at least one target.
    """
    by_region: dict[str, dict[str, list[Node]]] = defaultdict(lambda: defaultdict(list))
    for node in unique_targets(source, targets):
        by_region[node.region][node.group].append(node)
    regions = []
    for region in sorted(by_region, key=lambda r: (r != source.region, r)):
        own = region == source.region
        groups = by_region[region]
        names = sorted(groups, key=lambda g: (not (own and g == source.group), g))
        regions.append(
            Region(
                region,
                tuple(Group(region, g, tuple(sorted(groups[g], key=member_key))) for g in names),
            )
        )
    return tuple(regions)


def fanout_slots(node: Node, group_mean: float, fanout: int) -> int:
    """How many children `node` may feed: `fanout` scaled by its share of the group's capacity.

    Bounded to 1..2*fanout so that a weak node still relays and a strong one does not starve its
    own uplink.
    """
    return max(1, min(2 * fanout, round(fanout * node.capacity / group_mean)))


def slot_table(nodes: Sequence[Node], fanout: int) -> dict[str, int]:
    """The fan-out slots of every node, each weighed against the mean capacity of its own group.

    Args:
        nodes: the nodes that take part (the source included: it fans out inside its own group).
        fanout: the slots of a node of average capacity, >= 1.

    Returns:
        Slots by node id.
    """
    groups: dict[GroupKey, list[Node]] = defaultdict(list)
    for node in nodes:
        groups[node.group_key].append(node)
    slots = {}
    for members in groups.values():
        mean = sum(n.capacity for n in members) / len(members)
        for node in members:
            slots[node.node_id] = fanout_slots(node, mean, fanout)
    return slots
