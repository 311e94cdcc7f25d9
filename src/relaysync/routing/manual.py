"""Manual routes: an operator's own relay tree for a mapping, checked, then run with bypass.

The operator writes hops as (parent, child) pairs of server names or node ids. The route is
checked as a whole before anything runs, so a typo is refused with a message that says what
to fix instead of leaving a target silently unfed. At run time a manual hop that cannot be used
(its parent is down, or the link failed) does not lose the child: it is re-attached in the same
bypass order as the default tree.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet

from relaysync.errors import RouteError
from relaysync.routing._tree import TreeBuilder
from relaysync.routing.planner import Hop, Plan
from relaysync.routing.topology import Node, arrange, unique_targets


def manual_plan(
    source: Node,
    targets: Sequence[Node],
    hops: Sequence[tuple[str, str]],
    known: Mapping[str, Node],
    *,
    down: AbstractSet[str] = frozenset(),
    failed_hops: AbstractSet[tuple[str, str]] = frozenset(),
    fanout: int = 4,
) -> Plan:
    """Plan a mapping's tree from an operator's route.

    Args:
        source: the node changes start from.
        targets: the mapping's targets; every one must be reached by the route.
        hops: (parent, child) pairs, each side a server name or node id.
        known: every server the master knows, by node id (used to resolve names and ids).
        down: node ids that must not be placed.
        failed_hops: (parent id, child id) links that must not be used.
        fanout: fan-out slots of an average node, for the bypass of unusable hops (>= 1).

    Returns:
        The plan: manual hops at level "manual", bypassed children at their bypass level.

    Raises:
        RouteError: the route names an unknown or ambiguous server, has a loop, reaches a
            server twice or reaches the source, starts a hop from a server it does not reach,
            uses a server that is not a target as a relay, or misses a target.
        ValueError: if `fanout` < 1.
    """
    nodes = unique_targets(source, targets)
    names = _Names(source, known, nodes)
    pairs = names.resolve(hops)
    parent_of = _check_route(source.node_id, pairs, {n.node_id for n in nodes}, names)
    tree = TreeBuilder(source, nodes, fanout=fanout, down=down, failed_hops=failed_hops)
    _follow(tree, _route_order(source.node_id, pairs), parent_of)
    ordered = [node for region in arrange(source, nodes) for node in region.members]
    return Plan(source.node_id, tuple(Hop(*hop) for hop in tree.hops), tree.unplaced(ordered))


class _Names:
    """Resolves the operator's server names and node ids to node ids, and back for messages."""

    def __init__(self, source: Node, known: Mapping[str, Node], targets: Sequence[Node]) -> None:
        self.nodes: dict[str, Node] = {**known, **{n.node_id: n for n in (*targets, source)}}
        self._by_name: dict[str, set[str]] = {}
        for node_id, node in self.nodes.items():
            self._by_name.setdefault(node.name, set()).add(node_id)

    def label(self, node_id: str) -> str:
        """How a message names a server: its name, and its id when the name is not unique."""
        node = self.nodes.get(node_id)
        if node is None:
            return repr(node_id)
        if len(self._by_name[node.name]) > 1:
            return f"{node.name!r} (id {node_id})"
        return repr(node.name)

    def labels(self, node_ids: Sequence[str]) -> str:
        return ", ".join(self.label(n) for n in node_ids)

    def resolve(self, hops: Sequence[tuple[str, str]]) -> list[tuple[str, str]]:
        """The hops as node-id pairs.

        Raises:
            RouteError: if a server is unknown, or a name matches several servers.
        """
        unknown: list[str] = []
        ambiguous: list[str] = []
        for token in dict.fromkeys(t for hop in hops for t in hop):
            matches = self._by_name.get(token, set())
            if token in self.nodes or len(matches) == 1:
                continue
            if matches:
                ambiguous.append(token)
            else:
                unknown.append(token)
        if unknown:
            raise RouteError(
                f"unknown server(s) {', '.join(map(repr, unknown))}: use the name or node id of a "
                "server the master knows (see `relaysync status`)"
            )
        if ambiguous:
            raise RouteError(
                f"server name(s) {', '.join(map(repr, ambiguous))} match several servers: "
                "use their node ids instead"
            )
        # A hop written twice is still one hop.
        return list(dict.fromkeys((self._id(p), self._id(c)) for p, c in hops))

    def _id(self, token: str) -> str:
        return token if token in self.nodes else next(iter(self._by_name[token]))


def _check_route(
    source: str, pairs: Sequence[tuple[str, str]], target_ids: AbstractSet[str], names: _Names
) -> dict[str, str]:
    """Check the route as a whole; return every child's parent.

    Raises:
        RouteError: naming the offending servers and what to do about them.
    """
    parent_of = _check_parents(source, pairs, names)
    _check_loops(parent_of, names)
    _check_connected(source, pairs, parent_of, names)
    in_route = dict.fromkeys(n for hop in pairs for n in hop if n != source)
    relays = [n for n in in_route if n not in target_ids]
    if relays:
        raise RouteError(
            f"{names.labels(relays)} in the route are not targets of the mapping: relays that are "
            "not targets are not supported yet; add them as targets or route around them"
        )
    missed = sorted(target_ids - set(parent_of), key=lambda n: (names.nodes[n].name, n))
    if missed:
        raise RouteError(
            f"target(s) {names.labels(missed)} not reached by the route: add a hop into each"
        )
    return parent_of


def _check_parents(source: str, pairs: Sequence[tuple[str, str]], names: _Names) -> dict[str, str]:
    """Every child has exactly one parent, and the source is nobody's child."""
    into_source = [p for p, c in pairs if c == source]
    if into_source:
        raise RouteError(
            f"hop(s) from {names.labels(into_source)} into the source {names.label(source)}: the "
            "source only sends; remove those hops"
        )
    parents: dict[str, list[str]] = {}
    for parent, child in pairs:
        if parent not in parents.setdefault(child, []):
            parents[child].append(parent)
    twice = [c for c, ps in parents.items() if len(ps) > 1]
    if twice:
        detail = "; ".join(f"{names.label(c)} from {names.labels(parents[c])}" for c in twice)
        raise RouteError(f"server(s) reached more than once ({detail}): keep one hop into each")
    return {child: ps[0] for child, ps in parents.items()}


def _check_loops(parent_of: Mapping[str, str], names: _Names) -> None:
    """No server is its own ancestor (one parent each, so a loop is a cycle of parents)."""
    done: set[str] = set()
    for start in parent_of:
        trail: list[str] = []
        node: str | None = start
        while node is not None and node not in done and node not in trail:
            trail.append(node)
            node = parent_of.get(node)
        if node is not None and node in trail:
            cycle = trail[trail.index(node) :] + [node]
            raise RouteError(
                f"the route has a loop: {' <- '.join(names.label(n) for n in cycle)}; "
                "break it so every server is fed from the source"
            )
        done.update(trail)


def _check_connected(
    source: str, pairs: Sequence[tuple[str, str]], parent_of: Mapping[str, str], names: _Names
) -> None:
    """Every hop starts from the source or from a server the route feeds (loops already refused)."""
    roots = dict.fromkeys(p for p, _ in pairs if p != source and p not in parent_of)
    if roots:
        raise RouteError(
            f"hop(s) start from {names.labels(list(roots))}, which the route never feeds from the "
            f"source {names.label(source)}: add a hop into each, or start those hops from the source"
        )


def _follow(tree: TreeBuilder, order: Sequence[str], parent_of: Mapping[str, str]) -> None:
    """Place nodes by their manual hops, bypassing one node at a time where a hop is unusable.

    After each bypass the manual hops are tried again: the bypassed node may be the parent that
    its children were waiting for, and they keep their manual hops under it.
    """
    waiting = [c for c in order if not tree.is_down(c)]
    while waiting:
        waiting = [c for c in waiting if not tree.try_place(parent_of[c], c, "manual")]
        bypassed = next((c for c in waiting if tree.attach_bypass(c)), None)
        if bypassed is None:
            return
        waiting.remove(bypassed)


def _route_order(source: str, pairs: Sequence[tuple[str, str]]) -> list[str]:
    """Children breadth-first from the source, in the order the operator wrote the hops."""
    children: dict[str, list[str]] = {}
    for parent, child in pairs:
        children.setdefault(parent, []).append(child)
    order: list[str] = []
    frontier = [source]
    while frontier:
        nxt = [c for p in frontier for c in children.get(p, [])]
        order.extend(nxt)
        frontier = nxt
    return order
