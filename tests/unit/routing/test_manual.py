"""Manual routes: checked as a whole, kept as written, bypassed only where a hop is unusable."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from relaysync.errors import ConfigError, RouteError
from relaysync.routing import Hop, Node, manual_plan
from tests.unit.routing._plans import SOURCE, assert_tree

A1 = Node("n-a1", "web-a1", "eu", "a")
A2 = Node("n-a2", "web-a2", "eu", "a")
B1 = Node("n-b1", "web-b1", "eu", "b")
RELAY = Node("n-r", "relay", "eu", "b")
TARGETS = [A1, A2, B1]
KNOWN = {n.node_id: n for n in [SOURCE, A1, A2, B1, RELAY]}
ROUTE = [("origin", "web-a1"), ("web-a1", "n-a2"), ("src", "web-b1")]


def refused(hops: list[tuple[str, str]], targets: list[Node] = TARGETS) -> str:
    with pytest.raises(RouteError) as info:
        manual_plan(SOURCE, targets, hops, KNOWN)
    return str(info.value)


def test_a_valid_route_is_kept_as_written() -> None:
    plan = manual_plan(SOURCE, TARGETS, ROUTE, KNOWN)
    assert plan.hops == (
        Hop("src", "n-a1", "manual"),
        Hop("src", "n-b1", "manual"),
        Hop("n-a1", "n-a2", "manual"),
    )
    assert plan.unreachable == ()
    assert plan.path_to("n-a2") == ("src", "n-a1", "n-a2")


def test_route_error_is_a_config_error() -> None:
    assert issubclass(RouteError, ConfigError)
    assert refused([]).startswith("Invalid manual route:")


def test_unknown_server() -> None:
    message = refused([*ROUTE, ("web-a1", "web-zz")])
    assert "unknown server" in message and "'web-zz'" in message


def test_ambiguous_name() -> None:
    twin = Node("n-a1-bis", "web-a1", "eu", "a")
    with pytest.raises(RouteError, match="'web-a1' match several servers: use their node ids"):
        manual_plan(SOURCE, [*TARGETS, twin], ROUTE, KNOWN)


def test_loop() -> None:
    message = refused([("src", "n-a1"), ("web-a2", "web-b1"), ("web-b1", "web-a2")])
    assert "loop" in message and "'web-a2'" in message and "'web-b1'" in message


def test_hop_into_itself_is_a_loop() -> None:
    assert "loop: 'web-b1' <- 'web-b1'" in refused([*ROUTE[:2], ("web-b1", "web-b1")])


def test_target_reached_twice() -> None:
    message = refused([*ROUTE, ("web-b1", "web-a2")])
    assert "reached more than once" in message
    assert "'web-a2' from 'web-a1', 'web-b1'" in message


def test_source_as_child() -> None:
    message = refused([*ROUTE, ("web-b1", "origin")])
    assert "into the source 'origin'" in message and "'web-b1'" in message


def test_disconnected_hop() -> None:
    message = refused([("src", "web-a1"), ("web-b1", "web-a2")])
    assert "start from 'web-b1'" in message and "never feeds" in message


def test_unreached_target() -> None:
    message = refused(ROUTE[:2])
    assert "'web-b1' not reached by the route" in message


def test_relay_that_is_not_a_target() -> None:
    message = refused([*ROUTE[:2], ("src", "relay"), ("relay", "web-b1")])
    assert "'relay'" in message and "not targets of the mapping" in message
    assert "not supported yet" in message


def test_down_manual_parent_falls_back_to_bypass() -> None:
    plan = manual_plan(SOURCE, TARGETS, ROUTE, KNOWN, down={"n-a1"})
    assert plan.unreachable == ("n-a1",)
    # Its group-mate has no live group member to hang under, so the region takes it.
    assert Hop("n-b1", "n-a2", "bypass-same-region") in plan.hops


def test_failed_manual_hop_falls_back_to_bypass() -> None:
    plan = manual_plan(SOURCE, TARGETS, ROUTE, KNOWN, failed_hops={("n-a1", "n-a2")})
    assert Hop("n-b1", "n-a2", "bypass-same-region") in plan.hops
    assert plan.unreachable == ()


def test_children_of_a_bypassed_node_keep_their_manual_hops() -> None:
    a3 = Node("n-a3", "web-a3", "eu", "a")
    route = [*ROUTE, ("web-a2", "web-a3")]
    plan = manual_plan(SOURCE, [*TARGETS, a3], route, KNOWN, failed_hops={("n-a1", "n-a2")})
    assert Hop("n-a2", "n-a3", "manual") in plan.hops


@st.composite
def routes(draw: st.DrawFn) -> tuple[list[Node], list[tuple[str, str]]]:
    """A random valid route: each target hangs under the source or an earlier target."""
    count = draw(st.integers(1, 20))
    targets = [
        Node(f"n{i}", f"web{i}", f"r{draw(st.integers(0, 2))}", f"g{draw(st.integers(0, 2))}")
        for i in range(count)
    ]
    hops = [
        (draw(st.sampled_from(["src", *(t.node_id for t in targets[:i])])), t.name)
        for i, t in enumerate(targets)
    ]
    return targets, draw(st.permutations(hops))


@settings(max_examples=150, deadline=None)
@given(routes(), st.data())
def test_any_valid_route_survives_any_failures(
    route: tuple[list[Node], list[tuple[str, str]]], data: st.DataObject
) -> None:
    targets, hops = route
    known = {t.node_id: t for t in targets}
    ids = sorted(known)
    down = data.draw(st.frozensets(st.sampled_from(ids)))
    pairs = [("src", c) for c in ids] + [(p, c) for p in ids for c in ids if p != c]
    failed = data.draw(st.frozensets(st.sampled_from(pairs), max_size=len(pairs) // 3))
    plan = manual_plan(SOURCE, targets, hops, known, down=down, failed_hops=failed)
    assert_tree(plan, SOURCE, targets, down=down, failed_hops=failed)
    parents = {c: p for p, c in _by_id(hops, targets)}
    placed = {"src"}
    for hop in plan.hops:  # a manual hop usable when its child is placed is always kept
        p = parents[hop.child]
        if p in placed and (p, hop.child) not in failed:
            assert hop == Hop(p, hop.child, "manual")
        placed.add(hop.child)
    if not down and not failed:
        assert {(h.parent, h.child) for h in plan.hops} == set(_by_id(hops, targets))


def _by_id(hops: list[tuple[str, str]], targets: list[Node]) -> list[tuple[str, str]]:
    ids = {t.name: t.node_id for t in targets}
    return [(ids.get(p, p), ids.get(c, c)) for p, c in hops]
