"""kill -9 of a target agent that holds commit reports the master has not taken loses none of
them: the agent keeps each report in its outbox on disk (agent/outbox.py) until the master
takes it, and sends what is left when it starts again. The master is stopped meanwhile, so
that the reports cannot go; the source still sends the files (the master is not on the data
path), and the targets commit and acknowledge them."""

from __future__ import annotations

import pytest

from relaysync.testing.cluster import wait_until
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet

pytestmark = pytest.mark.integration

FILES = 40


def _stats(fleet: Fleet, by: str) -> dict[str, dict]:
    rows = fleet.cluster.api.get("/api/stats", params={"by": by}).json()
    return {r["key"]: r for r in rows}


def test_target_killed_with_reports_not_taken_loses_none_and_counts_each_once(
    own_fleet: Fleet,
) -> None:
    cluster = own_fleet.cluster
    mapping, src, dsts = own_fleet.new_mapping()
    assert cluster.master is not None
    # Settled first, as in test_master_killed.py: a session restarted while the routes reach the
    # agents may commit a file twice, a second commit the job log rightly counts.
    (src / "warm.html").write_text("routes settled\n")
    own_fleet.wait_converged(src, dsts)
    wait_until(
        lambda: _stats(own_fleet, "mapping").get(mapping["name"], {}).get("files") == 2,
        timeout_s=CONVERGE_TIMEOUT_S,
        what="the warm-up file in the job log for both targets",
    )
    cluster.master.stop()
    for i in range(FILES):
        (src / f"f{i}.html").write_text(f"page {i}\n")
    # Both targets committed every file; their reports wait for the master.
    own_fleet.wait_converged(src, dsts)
    cluster.agents["t1"].process.kill()
    cluster.start_master()
    cluster.start_agent("t1")

    def all_once() -> bool:
        by_mapping = _stats(own_fleet, "mapping").get(mapping["name"], {})
        by_server = _stats(own_fleet, "server")
        files = [by_server.get(t, {}).get("files") for t in ("t1", "t2")]
        return by_mapping.get("changes") == FILES + 1 and files == [FILES + 1, FILES + 1]

    wait_until(all_once, timeout_s=CONVERGE_TIMEOUT_S, what="every change in the job log once")
    # Nothing comes later to count twice: t1 sent what its outbox held once, before new reports.
    t1_log = cluster.agents["t1"].process.log_path.read_text(errors="replace")
    assert "not taken by the master; sending them first" in t1_log
    assert _stats(own_fleet, "mapping")[mapping["name"]]["files"] == 2 * (FILES + 1)
