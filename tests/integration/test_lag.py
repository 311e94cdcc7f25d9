"""A mapping's lag while its only target is down: the source tells the master its journal head
(with its figures), so `GET /api/mappings/{id}/status` shows the changes the target misses.

Before, the head came only from the change rows the targets report: with the only target down
nothing reported, and the lag stayed 0 while the source journaled on."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from relaysync.testing.cluster import wait_until
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet, start_fleet

pytestmark = pytest.mark.integration

FILES = 20
METRICS_INTERVAL_S = 0.5  # the source sends its figures, and its journal heads, this often


@pytest.fixture
def lag_fleet(tmp_path: Path) -> Iterator[Fleet]:
    """A source and one target, of their own: the target is stopped."""
    f = start_fleet(
        tmp_path,
        agents=("src", "t1"),
        extra_env={"RELAYSYNC_METRICS_INTERVAL_S": str(METRICS_INTERVAL_S)},
    )
    try:
        yield f
    finally:
        f.cluster.stop()


def _target(fleet: Fleet, mapping: dict[str, Any]) -> dict[str, Any]:
    r = fleet.cluster.api.get(f"/api/mappings/{mapping['id']}/status")
    assert r.status_code == 200, r.text
    [target] = r.json()["targets"]
    return dict(target)


def test_lag_shows_the_changes_a_down_target_misses(lag_fleet: Fleet) -> None:
    cluster = lag_fleet.cluster
    mapping, src, dsts = lag_fleet.new_mapping(targets=("t1",))
    (src / "first.txt").write_text("first")
    lag_fleet.wait_converged(src, dsts)
    before = wait_until(
        lambda: (t := _target(lag_fleet, mapping))["lag"] == 0 and t["watermark"] > 0 and t,
        timeout_s=CONVERGE_TIMEOUT_S,
        what="t1 caught up",
    )

    cluster.agents["t1"].process.stop()  # SIGTERM to its pid
    for i in range(FILES):
        (src / f"missed-{i}.txt").write_text(f"missed {i}")
    behind = wait_until(
        lambda: (t := _target(lag_fleet, mapping))["lag"] >= FILES and t,
        timeout_s=CONVERGE_TIMEOUT_S,
        what=f"t1's lag at {FILES} or more while it is down",
    )
    assert behind["watermark"] == before["watermark"]  # nothing of it came from t1
    assert behind["highest_seq"] == behind["watermark"] + behind["lag"]

    cluster.start_agent("t1")
    lag_fleet.wait_converged(src, dsts)
    # back to 0: the source's head is no seq the target never reaches
    wait_until(
        lambda: _target(lag_fleet, mapping)["lag"] == 0,
        timeout_s=CONVERGE_TIMEOUT_S,
        what="t1's lag back at 0",
    )
