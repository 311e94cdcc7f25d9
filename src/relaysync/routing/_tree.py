"""One distribution tree under construction: placements, fan-out slot use, and the bypass order.

Shared by the default planner (planner.py) and manual routes (manual.py), so both place nodes
and route around failures the same way.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from collections.abc import Set as AbstractSet

from relaysync.routing.topology import Node, slot_table

# The seed's bypass order when a node's planned hop is unusable: stay in the group, then in the
# region, then take any region, and only then send straight from the source.
BYPASS_LEVELS = ("bypass-same-group", "bypass-same-region", "bypass-other-region", "direct")


class TreeBuilder:
    """Places nodes one at a time under nodes already placed, so the result is always a tree.

    A node is placed at most once, under a parent placed before it, by a hop that is not failed
    and does not touch a down node. That alone rules out loops and keeps parents ahead of their
    children in `hops`, whatever order the callers try things in.
    """

    def __init__(
        self,
        source: Node,
        targets: Sequence[Node],
        *,
        fanout: int,
        down: AbstractSet[str],
        failed_hops: AbstractSet[tuple[str, str]],
    ) -> None:
        if fanout < 1:
            raise ValueError(f"fanout must be >= 1, not {fanout}")
        self.source = source
        self._nodes = {n.node_id: n for n in (source, *targets)}
        self._down = down
        self._failed = failed_hops
        self._slots = slot_table([n for n in self._nodes.values() if n.node_id not in down], fanout)
        self._load: Counter[str] = Counter()
        self._parent: dict[str, str] = {}
        self.placed: list[str] = [source.node_id]  # in placement order, the source first
        self.hops: list[tuple[str, str, str]] = []  # (parent, child, level), in placement order

    def node(self, node_id: str) -> Node:
        return self._nodes[node_id]

    def is_placed(self, node_id: str) -> bool:
        return node_id == self.source.node_id or node_id in self._parent

    def is_down(self, node_id: str) -> bool:
        return node_id in self._down

    def usable(self, parent: str, child: str) -> bool:
        """Whether the hop parent -> child may be used now."""
        return (
            self.is_placed(parent)
            and not self.is_placed(child)
            and parent not in self._down
            and child not in self._down
            and (parent, child) not in self._failed
        )

    def spare(self, node_id: str) -> int:
        """Free fan-out slots (negative when a bypass had to overload the node).

        The source's slots only count children in its own group: it sends one copy into every
        other group and region regardless.
        """
        return self._slots.get(node_id, 1) - self._load[node_id]

    def try_place(self, parent: str, child: str, level: str) -> bool:
        """Place `child` under `parent` if that hop is usable; return whether it was placed."""
        if not self.usable(parent, child):
            return False
        self._parent[child] = parent
        self.placed.append(child)
        self.hops.append((parent, child, level))
        if parent != self.source.node_id or self.node(child).group_key == self.source.group_key:
            self._load[parent] += 1
        return True

    def candidates(self, level: str, child: str) -> list[str]:
        """Placed nodes that may feed `child` at a bypass level, the best first.

        Best = most spare slots, then most capacity (then name and id, to stay deterministic).
        """
        if level == "direct":
            return [self.source.node_id]
        target = self.node(child)
        pool = []
        for node_id in self.placed[1:]:  # the source only ever bypasses as "direct"
            node = self.node(node_id)
            same_region = node.region == target.region
            same_group = node.group_key == target.group_key
            if (level, same_region, same_group) in (
                ("bypass-same-group", True, True),
                ("bypass-same-region", True, False),
                ("bypass-other-region", False, False),
            ):
                pool.append(node)
        pool.sort(key=lambda n: (-self.spare(n.node_id), -n.capacity, n.name, n.node_id))
        return [n.node_id for n in pool]

    def attach_bypass(self, child: str, levels: Sequence[str] = BYPASS_LEVELS) -> bool:
        """Attach `child` by the first usable hop in bypass order; return whether it was placed."""
        for level in levels:
            for parent in self.candidates(level, child):
                if self.try_place(parent, child, level):
                    return True
        return False

    def unplaced(self, nodes: Iterable[Node]) -> tuple[str, ...]:
        """The ids of `nodes` that are not in the tree, in the given order."""
        return tuple(n.node_id for n in nodes if not self.is_placed(n.node_id))
