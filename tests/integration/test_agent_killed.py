"""kill -9 of a target agent that holds commit reports the master has not taken loses none of
them: the agent keeps each report in its outbox on disk (agent/outbox.py) until the master
takes it, and sends what is left when it starts again. The master is stopped meanwhile, so
that the reports cannot go; the source still sends the files (the master is not on the data
path), and the targets commit and acknowledge them."""

from __future__ import annotations

import pytest

from tests.integration._job_log import job_log_stats, settle, wait_each_change_once
from tests.integration.conftest import Fleet

pytestmark = pytest.mark.integration

FILES = 40


def test_target_killed_with_reports_not_taken_loses_none_and_counts_each_once(
    own_fleet: Fleet,
) -> None:
    cluster = own_fleet.cluster
    mapping, src, dsts = own_fleet.new_mapping()
    assert cluster.master is not None
    settle(own_fleet, mapping, src, dsts)
    cluster.master.stop()
    for i in range(FILES):
        (src / f"f{i}.html").write_text(f"page {i}\n")
    # Both targets committed every file; their reports wait for the master.
    own_fleet.wait_converged(src, dsts)
    cluster.agents["t1"].process.kill()
    cluster.start_master()
    cluster.start_agent("t1")

    wait_each_change_once(own_fleet, mapping, FILES)
    # Nothing comes later to count twice: t1 sent what its outbox held once, before new reports.
    t1_log = cluster.agents["t1"].process.log_path.read_text(errors="replace")
    assert "not taken by the master; sending them first" in t1_log
    assert job_log_stats(own_fleet, "mapping")[mapping["name"]]["files"] == 2 * (FILES + 1)
