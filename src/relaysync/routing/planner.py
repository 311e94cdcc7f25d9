"""Route planning: the distribution tree a change follows from its source to every target.

The default tree is the seed's "grid network": the source sends one copy into each region and
one into each group, and each group fans the change out inside itself with a fan-out bounded
by capacity. So a change crosses each slow inter-region link once, and no relay has to feed
more children than its share of the group's capacity.

When a planned hop cannot be used (a node is down, or the link between two nodes failed), the
node is re-attached in the seed's bypass order: from its own group, then its region, then any
region, then straight from the source. A bypass prefers nodes with spare slots but may overload
one rather than leave a target unfed. Pure: no I/O, no clock, and the same input always gives
the same plan.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, field

from relaysync.routing._tree import BYPASS_LEVELS, TreeBuilder
from relaysync.routing.topology import Group, Node, Region, arrange, unique_targets

# Why a hop is in the plan, in the order the planner prefers them. Agents only need parent and
# child; the level is for the console and for tests.
LEVELS = (
    "region-entry",
    "group-entry",
    "in-group",
    "bypass-same-group",
    "bypass-same-region",
    "bypass-other-region",
    "direct",
    "manual",
)


@dataclass(frozen=True)
class Hop:
    """One link of the tree: `parent` sends every change to `child`."""

    parent: str  # node id (the source's for a first hop)
    child: str  # node id
    level: str  # one of LEVELS


@dataclass(frozen=True)
class Plan:
    """A distribution tree: every placed target has one parent, placed before it.

    Raises:
        ValueError: on construction, if the hops do not form such a tree from `source`.
    """

    source: str
    hops: tuple[Hop, ...]  # one per placed node, every parent placed before its children
    unreachable: tuple[str, ...]  # targets not placed (down, or no usable hop), topology order
    _parents: dict[str, str] = field(init=False, repr=False, compare=False)
    _children: dict[str, tuple[str, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        parents: dict[str, str] = {}
        children: dict[str, list[str]] = {}
        for hop in self.hops:
            if hop.level not in LEVELS:
                raise ValueError(f"hop {hop.parent} -> {hop.child}: unknown level {hop.level!r}")
            if hop.child == self.source or hop.child in parents:
                raise ValueError(f"node {hop.child} is placed twice")
            if hop.parent != self.source and hop.parent not in parents:
                raise ValueError(
                    f"hop {hop.parent} -> {hop.child}: the parent is not placed before it"
                )
            parents[hop.child] = hop.parent
            children.setdefault(hop.parent, []).append(hop.child)
        object.__setattr__(self, "_parents", parents)
        object.__setattr__(self, "_children", {k: tuple(v) for k, v in children.items()})

    def parent_of(self, node_id: str) -> str | None:
        """The node that feeds `node_id`; None for the source and for nodes not in the plan."""
        return self._parents.get(node_id)

    def children_of(self, node_id: str) -> tuple[str, ...]:
        """The nodes `node_id` feeds, in plan order."""
        return self._children.get(node_id, ())

    def path_to(self, node_id: str) -> tuple[str, ...]:
        """Node ids from the source to `node_id` inclusive; empty if `node_id` is not in the plan."""
        if node_id != self.source and node_id not in self._parents:
            return ()
        path = [node_id]
        while path[-1] != self.source:
            path.append(self._parents[path[-1]])
        return tuple(reversed(path))


def plan_tree(
    source: Node,
    targets: Sequence[Node],
    *,
    fanout: int = 4,
    down: AbstractSet[str] = frozenset(),
    failed_hops: AbstractSet[tuple[str, str]] = frozenset(),
) -> Plan:
    """Plan the default distribution tree from `source` to `targets`.

    Args:
        source: the node changes start from; if it is in `down`, nothing is reachable.
        targets: the nodes to reach; the source and repeated ids are ignored.
        fanout: fan-out slots of a node of average capacity in its group (>= 1).
        down: node ids that must not be placed; down targets are listed as unreachable.
        failed_hops: (parent id, child id) links that must not be used.

    Returns:
        The plan; targets that no usable hop reaches are in `Plan.unreachable`.

    Raises:
        ValueError: if `fanout` < 1.
    """
    nodes = unique_targets(source, targets)
    tree = TreeBuilder(source, nodes, fanout=fanout, down=down, failed_hops=failed_hops)
    regions = arrange(source, nodes)
    _Grid(tree, regions).run()
    ordered = [node for region in regions for node in region.members]
    return Plan(source.node_id, tuple(Hop(*hop) for hop in tree.hops), tree.unplaced(ordered))


_Pending = Region | Group | Node  # a region with no entry yet, an exhausted group, or one node


class _Grid:
    """Builds the default tree: planned hops first, then the bypass order for what is left."""

    def __init__(self, tree: TreeBuilder, regions: Sequence[Region]) -> None:
        self._tree = tree
        self._regions = regions
        self._pending: list[_Pending] = []
        self._queued: set[str] = set()  # nodes waiting for a bypass, kept out of the fan-out

    def run(self) -> None:
        source = self._tree.source
        for region in self._regions:
            if region.name == source.region:
                self._open_region(region, source.node_id)  # the source is its own region's copy
                continue
            entry = self._pick_entry(
                region, lambda n: self._tree.try_place(source.node_id, n, "region-entry")
            )
            if entry is not None:
                self._open_region(region, entry)
            elif self._open_members(region.members):
                self._pending.append(region)  # every source -> region hop failed: after the others
        self._settle()

    def _open_members(self, members: Sequence[Node]) -> list[Node]:
        """Members still to place by a planned hop: not down, not placed, not waiting for a bypass."""
        tree = self._tree
        return [
            n
            for n in members
            if not tree.is_down(n.node_id)
            and not tree.is_placed(n.node_id)
            and n.node_id not in self._queued
        ]

    def _placed_in(self, group: Group) -> list[str]:
        """Placed members of `group` (the source too, in its own group), in placement order."""
        return [n for n in self._tree.placed if self._tree.node(n).group_key == group.key]

    def _queue(self, nodes: Sequence[Node]) -> None:
        for node in nodes:
            self._queued.add(node.node_id)
            self._pending.append(node)

    def _pick_entry(self, region: Region, place: Callable[[str], bool]) -> str | None:
        """The first member of `region` (first group first) that `place` manages to place.

        Members skipped in the entry's own group lost their planned role: they wait for a bypass
        inside their group. A group skipped whole just gets its own group entry later.
        """
        for group in region.groups:
            skipped: list[Node] = []
            for member in self._open_members(group.members):
                if place(member.node_id):
                    self._queue(skipped)
                    return member.node_id
                skipped.append(member)
        return None

    def _open_region(self, region: Region, hub: str) -> None:
        """Give every group of a region whose `hub` is placed its entry, then fan each group out."""
        waiting = []
        for group in region.groups:
            if self._placed_in(group) or not self._open_members(group.members):
                continue
            parent = self._entry_parent(region, hub, reserve=True)
            if parent is None:
                waiting.append(group)
            else:
                self._group_entry(group, parent)
        for group in region.groups:
            if group not in waiting:
                self._fan_out(group)
        for group in waiting:  # every region node was full: hang the group under a new leaf
            self._group_entry(group, self._entry_parent(region, hub, reserve=False) or hub)
            self._fan_out(group)

    def _entry_parent(self, region: Region, hub: str, *, reserve: bool) -> str | None:
        """The node of `region` that feeds the next group entry: the hub first, then by placement.

        With `reserve`, a node keeps one slot for its own group's fan-out while that group still
        has members to place, so group entries never crowd out the group they arrive in.
        """
        tree = self._tree
        if hub == tree.source.node_id:
            return hub  # the source's slots are unbounded for entries
        others = [n for n in tree.placed if n != hub and tree.node(n).region == region.name]
        for node_id in (hub, *others):
            node = tree.node(node_id)
            kept = reserve and any(
                m.group_key == node.group_key for m in self._open_members(region.members)
            )
            if tree.spare(node_id) - kept >= 1:
                return node_id
        return None

    def _group_entry(self, group: Group, parent: str) -> None:
        """Attach the group's first member that `parent` can reach; skipped ones wait for a bypass."""
        skipped: list[Node] = []
        for member in self._open_members(group.members):
            if self._tree.try_place(parent, member.node_id, "group-entry"):
                self._queue(skipped)
                return
            skipped.append(member)
        if skipped:
            self._pending.append(group)  # exhausted: no member reachable by its planned hop

    def _fan_out(self, group: Group) -> None:
        """Breadth-first: each member goes under the earliest placed member with a spare slot."""
        placed = self._placed_in(group)
        if not placed:
            return
        for member in self._open_members(group.members):
            if self._in_group(placed, member.node_id):
                placed.append(member.node_id)
            else:
                self._queue([member])

    def _in_group(self, placed: Sequence[str], child: str) -> bool:
        tree = self._tree
        return any(tree.spare(p) >= 1 and tree.try_place(p, child, "in-group") for p in placed)

    def _settle(self) -> None:
        """Resolve pending items by bypass, pass after pass, while a pass still places anything."""
        while self._pending:
            batch, self._pending = self._pending, []
            stuck = [item for item in batch if not self._resolve(item)]
            progress = len(stuck) < len(batch)
            self._pending = stuck + self._pending
            if not progress:
                return

    def _resolve(self, item: _Pending) -> bool:
        if isinstance(item, Node):
            return self._tree.attach_bypass(item.node_id)
        if isinstance(item, Group):
            return self._resolve_group(item)
        return self._resolve_region(item)

    def _resolve_group(self, group: Group) -> bool:
        """An exhausted group: its entry from elsewhere in the region, another region, the source."""
        for level in BYPASS_LEVELS[1:]:
            for member in self._open_members(group.members):
                if self._tree.attach_bypass(member.node_id, (level,)):
                    self._fan_out(group)
                    return True
        return False

    def _resolve_region(self, region: Region) -> bool:
        """A region the source cannot reach: its entry from a node of another region."""
        entry = self._pick_entry(
            region, lambda n: self._tree.attach_bypass(n, ("bypass-other-region",))
        )
        if entry is None:
            return False
        self._open_region(region, entry)
        return True
