"""Relay routes over Region > Group > Server with real agent processes (issue 4): the planned
tree, the bypass order, streaming through a relay, manual routes. One grid per module
(conftest.py); tests that restart or reconfigure agents put them back as they were before they
end. (Failures along the routes: test_relay_failures.py.)
"""

from __future__ import annotations

import os
import time

import pytest

from relaysync.testing.cluster import wait_until
from tests._trees import temp_files
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet
from tests.integration.relay._grid import (
    GRID,
    ROUTE_TIMEOUT_S,
    TARGETS,
    _latest_route,
    _mapping,
    _parents,
    _restart,
    _routes,
    _slow_relay_pair,
    _wait_plan,
    _wait_route,
)

pytestmark = pytest.mark.integration


def test_default_tree_sends_one_copy_into_each_region_and_group(grid: Fleet) -> None:
    mapping_id, src, dsts = _mapping(grid)
    routes = _wait_plan(
        grid, mapping_id, lambda p: len(p) == len(TARGETS), "a plan covering every target"
    )
    parents = _parents(routes)
    from_source = [c for c, (p, _) in parents.items() if p == "src"]
    assert sorted(GRID[c][0] for c in from_source) == ["r1", "r2"], parents
    for group in {g for _, g in GRID.values()}:
        entering = [
            c
            for c, (p, _) in parents.items()
            if GRID[c][1] == group and GRID.get(p, ("", ""))[1] != group
        ]
        assert len(entering) == 1, (group, parents)
    for i in range(20):
        (src / f"f{i}.txt").write_text(f"file {i}\n" * 100)
    (src / "big.bin").write_bytes(os.urandom(5 * 1024 * 1024))
    grid.wait_converged(src, dsts)
    # the job log shows every target served along its planned path, through the relays
    for target in TARGETS:
        path = [target]
        while path[-1] != "src":
            path.append(parents[path[-1]][0])
        _wait_route(grid, mapping_id, target, ">".join(reversed(path)))


def _entry_of_b_group(parents: dict[str, tuple[str, str]]) -> tuple[str, str, str]:
    """(server, parent, level) of the hop that carries the mapping into group r1g2."""
    entry = next(c for c in ("b1", "b2") if parents[c][0] not in ("b1", "b2"))
    return entry, *parents[entry]


@pytest.mark.parametrize(
    ("refusing", "refused", "level"),
    [
        # b1 will not take the stream from a1 (the region entry): its group mate b2 enters the group
        (("b1",), "a1", "bypass-same-group"),
        # neither b1 nor b2 takes it from a1: the group is exhausted, a2 of the same region serves it
        (("b1", "b2"), "a1", "bypass-same-region"),
        # no server of region r1 reaches group r1g2: it is served from the other region
        (("b1", "b2"), "a1,a2", "bypass-other-region"),
    ],
    ids=["same-group", "same-region", "other-region"],
)
def test_bypass_order(grid: Fleet, refusing: tuple[str, ...], refused: str, level: str) -> None:
    try:
        for name in refusing:
            _restart(grid, name, env={"RELAYSYNC_REFUSE_PEERS": refused})
        mapping_id, src, dsts = _mapping(grid)
        (src / "page.html").write_text("<p>hello</p>")
        grid.wait_converged(src, dsts, timeout_s=90)
        parents = _parents(_routes(grid, mapping_id))
        entry, parent, entry_level = _entry_of_b_group(parents)
        if level == "bypass-same-group":
            assert (entry, parent, entry_level) == ("b2", "a1", "group-entry"), parents
            assert parents["b1"] == ("b2", "bypass-same-group"), parents
        elif level == "bypass-same-region":
            assert (entry, parent, entry_level) == ("b1", "a2", "bypass-same-region"), parents
        else:
            assert GRID[parent][0] == "r2" and entry_level == "bypass-other-region", parents
        path = ["b1"]
        while path[-1] != "src":
            path.append(parents[path[-1]][0])
        (src / "page.html").write_text("<p>hello again</p>")
        grid.wait_converged(src, dsts, timeout_s=90)
        _wait_route(grid, mapping_id, "b1", ">".join(reversed(path)))
    finally:
        for name in refusing:
            _restart(grid, name)


def test_streaming_relay_forwards_before_it_has_the_whole_file(grid: Fleet) -> None:
    with _slow_relay_pair(grid) as pair:
        src, dsts = pair.src, pair.dsts
        relay_dir, child_dir = pair.dst(pair.relay), pair.dst(pair.child)
        size = 24 * 1024 * 1024  # about 5 s at 40 Mbit/s
        (src / "large.bin").write_bytes(os.urandom(size))
        seen: list[tuple[int, bool]] = []

        def child_has_bytes_first() -> bool:
            held = sum(
                (child_dir / t).stat().st_size
                for t in temp_files(child_dir)
                if (child_dir / t).exists()
            )
            relay_done = (relay_dir / "large.bin").exists()
            seen.append((held, relay_done))
            if relay_done:
                raise AssertionError(
                    f"the relay had the whole file before its child got a byte: {seen[-5:]}"
                )
            return held > 0

        wait_until(
            child_has_bytes_first,
            timeout_s=CONVERGE_TIMEOUT_S,
            interval_s=0.01,
            what="the child receiving while the relay still receives",
        )
        grid.wait_converged(src, dsts, timeout_s=60)


@pytest.mark.parametrize(
    ("hops", "message"),
    [
        ([["src", "a1"], ["a2", "b1"], ["b1", "a2"]], "loop"),
        ([["src", "a1"], ["a1", "nosuch"]], "nosuch"),
        ([["src", "a1"], ["src", "a2"], ["a1", "a2"]], "a2"),
    ],
    ids=["loop", "unknown-server", "reached-twice"],
)
def test_manual_route_refused_with_a_clear_error(
    grid: Fleet, hops: list[list[str]], message: str
) -> None:
    mapping_id, _, _ = _mapping(grid, targets=("a1", "a2", "b1"))
    r = grid.cluster.api.put(
        f"/api/mappings/{mapping_id}/routing", json={"mode": "manual", "hops": hops}
    )
    assert r.status_code == 400, r.text
    assert message in r.json()["detail"], r.text


def test_manual_route_is_followed(grid: Fleet) -> None:
    hops = [["src", "c1"], ["c1", "a1"], ["a1", "a2"]]
    mapping_id, src, dsts = _mapping(grid, targets=("a1", "a2", "c1"), mode="manual", hops=hops)
    # The route reaches the agents a moment after the mapping: write until a change takes it.
    deadline = time.monotonic() + ROUTE_TIMEOUT_S
    for i in range(200):
        (src / f"x{i}.txt").write_text("manual")
        grid.wait_converged(src, dsts)
        if _latest_route(grid, mapping_id, "a2") == "src>c1>a1>a2" or time.monotonic() > deadline:
            break
    _wait_route(grid, mapping_id, "a2", "src>c1>a1>a2")
