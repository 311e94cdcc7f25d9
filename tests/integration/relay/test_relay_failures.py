"""Failures along relay routes with real agent processes (issue 4): a relay, a target, the
source or the master killed or stopped mid-transfer, and recovery per policy. One grid per
module (conftest.py); tests that kill or restart agents put them back as they were before they
end. (The routes themselves: test_relay_routes.py.)
"""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from relaysync.master.router import TICK_S
from relaysync.testing.cluster import wait_until
from tests._trees import snapshot, temp_files
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet
from tests.integration.relay._grid import (
    FAIL_AFTER_S,
    GRID,
    MASTER_DOWN_S,
    ROUTE_TIMEOUT_S,
    TARGETS,
    _latest_route,
    _mapping,
    _NoPartials,
    _parents,
    _restart,
    _routes,
    _slow_relay_pair,
    _wait_plan,
)

pytestmark = pytest.mark.integration


def test_region_relay_killed_mid_transfer_and_mid_burst(grid: Fleet) -> None:
    mapping_id, src, dsts = _mapping(grid, fail_after_s=120)
    parents = _parents(
        _wait_plan(grid, mapping_id, lambda p: len(p) == len(TARGETS), "a full plan")
    )
    relays = {GRID[c][0]: c for c, (p, _) in parents.items() if p == "src"}
    size = 50 * 1024 * 1024
    try:
        with _NoPartials(dsts, "big.bin", size) as watch:
            (src / "big.bin").write_bytes(os.urandom(size))
            relay = relays["r1"]
            relay_dir = dsts[TARGETS.index(relay)]
            wait_until(
                lambda: temp_files(relay_dir),
                timeout_s=CONVERGE_TIMEOUT_S,
                interval_s=0.005,
                what="the 50 MiB transfer reached the relay",
            )
            grid.cluster.agents[relay].process.kill()
            others = [d for t, d in zip(TARGETS, dsts, strict=True) if t != relay]
            grid.wait_converged(src, others, timeout_s=90)  # re-planned around the dead relay
            _restart(grid, relay)
            grid.wait_converged(src, dsts, timeout_s=90)

            relay = relays["r2"]
            for i in range(500):
                (src / f"burst-{i % 200}").write_bytes(os.urandom(1000 + i))
                if i == 250:
                    grid.cluster.agents[relay].process.kill()
            for i in range(0, 200, 9):
                (src / f"burst-{i}").unlink()
            others = [d for t, d in zip(TARGETS, dsts, strict=True) if t != relay]
            grid.wait_converged(src, others, timeout_s=90)
            _restart(grid, relay)
            grid.wait_converged(src, dsts, timeout_s=90)
        assert watch.bad == []
        assert all(temp_files(d) == [] for d in dsts)
    finally:
        for name in relays.values():
            if not grid.cluster.agents[name].process.alive():
                _restart(grid, name)


def test_replication_goes_on_while_the_master_is_down(grid: Fleet) -> None:
    mapping_id, src, dsts = _mapping(grid)
    _wait_plan(grid, mapping_id, lambda p: len(p) == len(TARGETS), "a full plan")
    (src / "before.txt").write_text("before")
    grid.wait_converged(src, dsts)
    grid.cluster.master.stop()  # type: ignore[union-attr]
    stopped = time.monotonic()
    try:
        for i in range(300):
            (src / f"during-{i % 100}.txt").write_text(f"change {i}")
        grid.wait_converged(src, dsts)  # every target, along the routes they had
        # keep the master down for MASTER_DOWN_S in all, while changes go on arriving
        round_ = 0
        while time.monotonic() - stopped < MASTER_DOWN_S and round_ < 100:
            round_ += 1
            (src / f"late-{round_}.txt").write_text(f"round {round_}")
            grid.wait_converged(src, dsts)
            time.sleep(0.5)  # pacing: changes keep arriving over the whole outage (the scenario)
    finally:
        grid.cluster.start_master()
    # the master catches up on the results
    head = len(snapshot(src))
    assert head > 100

    def recorded() -> bool:
        rows = grid.cluster.api.get(f"/api/mappings/{mapping_id}/status").json()["targets"]
        return len(rows) == len(TARGETS) and all(
            r["lag"] == 0 and r["watermark"] > 100 for r in rows
        )

    wait_until(recorded, timeout_s=ROUTE_TIMEOUT_S, what="the master has every target's watermark")


@pytest.mark.parametrize("policy", ["at_once", "reserved", "manual"])
def test_target_down_for_1000_changes_recovers_per_policy(grid: Fleet, policy: str) -> None:
    routing: dict[str, Any] = {"fail_after_s": FAIL_AFTER_S, "recovery_policy": policy}
    if policy == "reserved":
        routing["recovery_schedule"] = "every:6"
    mapping_id, src, dsts = _mapping(grid, **routing)
    _wait_plan(grid, mapping_id, lambda p: len(p) == len(TARGETS), "a full plan")
    (src / "seed.txt").write_text("seed")
    grid.wait_converged(src, dsts)
    down, down_dir = "d2", dsts[TARGETS.index("d2")]
    others = [d for d in dsts if d != down_dir]
    grid.cluster.agents[down].process.kill()
    try:
        for i in range(1000):
            (src / f"c{i % 400}.dat").write_bytes(f"change {i}".encode() * 10)
        grid.wait_converged(src, others, timeout_s=90)
        wait_until(
            lambda: any(f["target"] == down for f in _routes(grid, mapping_id)["failed"]),
            timeout_s=ROUTE_TIMEOUT_S,
            interval_s=0.1,
            what=f"{down} marked failed",
        )
    finally:
        _restart(grid, down)
    if policy == "manual":
        # back and up (the master saw it up: _restart waited for it), but nothing is sent until
        # an operator asks. A negative check over several router ticks (TICK_S): an automatic
        # policy starts its recovery at the first tick after the target is up; no tick count is
        # exposed to wait for instead.
        deadline = time.monotonic() + 4 * TICK_S
        while time.monotonic() < deadline:  # bounded observation window, not synchronisation
            assert snapshot(down_dir) != snapshot(src)
            time.sleep(0.2)
        r = grid.cluster.api.post(f"/api/mappings/{mapping_id}/recover", json={"target": down})
        assert r.status_code == 200, r.text
    grid.wait_converged(src, dsts, timeout_s=90)
    jobs = grid.cluster.api.get(f"/api/mappings/{mapping_id}/recoveries").json()
    job = next(j for j in jobs if j["target"] == down)
    assert job["trigger"] == policy
    wait_until(
        lambda: (
            next(
                j
                for j in grid.cluster.api.get(f"/api/mappings/{mapping_id}/recoveries").json()
                if j["target"] == down
            )["outcome"]
            == "done"
        ),
        timeout_s=ROUTE_TIMEOUT_S,
        what="the recovery job recorded as done",
    )
    # served by its nearest up-to-date neighbour: its group mate, not the source
    route = _latest_route(grid, mapping_id, down)
    assert route.split(">")[-2] == "d1", route


def test_master_killed_mid_burst_nothing_committed_twice(grid: Fleet) -> None:
    mapping_id, src, dsts = _mapping(grid)
    _wait_plan(grid, mapping_id, lambda p: len(p) == len(TARGETS), "a full plan")
    try:
        for i in range(400):
            (src / f"m-{i % 150}.txt").write_text(f"version {i}")
            if i == 200:
                grid.cluster.master.kill()  # type: ignore[union-attr]
    finally:
        grid.cluster.start_master()
    grid.wait_converged(src, dsts, timeout_s=90)
    for target in TARGETS:
        rows = grid.cluster.api.get(
            "/api/advances", params={"mapping": str(mapping_id), "target": target, "limit": 1000}
        ).json()
        spans = sorted((r["from_seq"], r["to_seq"]) for r in rows)
        for (_, prev_to), (next_from, _) in zip(spans, spans[1:], strict=False):
            assert next_from >= prev_to, (target, spans)  # no seq committed twice
    jobs = grid.cluster.api.get(
        "/api/jobs", params={"mapping": str(mapping_id), "limit": 1000}
    ).json()
    seqs = [j["seq"] for j in jobs]
    assert len(seqs) == len(set(seqs))


def test_source_killed_while_a_relay_streams_on(grid: Fleet) -> None:
    """kill -9 of the source while its relay is forwarding a large file to its child: no partial
    file is ever visible, and once the source is back every target converges."""
    size = 24 * 1024 * 1024
    with _slow_relay_pair(grid) as pair:
        src, dsts, child_dir = pair.src, pair.dsts, pair.dst(pair.child)
        try:
            with _NoPartials(dsts, "large.bin", size) as watch:
                (src / "large.bin").write_bytes(os.urandom(size))
                wait_until(
                    lambda: any(
                        (child_dir / t).exists() and (child_dir / t).stat().st_size > 0
                        for t in temp_files(child_dir)
                    ),
                    timeout_s=CONVERGE_TIMEOUT_S,
                    interval_s=0.01,
                    what="the child receiving through the relay",
                )
                grid.cluster.agents["src"].process.kill()
                _restart(grid, "src")
                grid.wait_converged(src, dsts, timeout_s=90)
            assert watch.bad == []
            assert all(temp_files(d) == [] for d in dsts)
        finally:
            if not grid.cluster.agents["src"].process.alive():
                _restart(grid, "src")
