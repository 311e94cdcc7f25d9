"""kill -9 of the master while its job log holds commit reports in memory loses none of them:
the targets keep each report until the master has taken it (into the store or the spool), and
send the others again to the restarted master. The store is held busy meanwhile by an exclusive
write lock of the test's own on the master's SQLite database (WAL: reads go on, so links stay up
until the master writes a server's state), which the job log waits on as on any locked database."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from tests.integration._job_log import job_log_stats, settle, wait_each_change_once
from tests.integration.conftest import Fleet

pytestmark = pytest.mark.integration

FILES = 40


def _write_lock(database: Path) -> sqlite3.Connection:
    """Hold the database's write lock until closed: every write of the master waits, then fails."""
    conn = sqlite3.connect(database, isolation_level=None, timeout=30)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_master_killed_with_reports_in_memory_loses_none_and_counts_each_once(
    own_fleet: Fleet,
) -> None:
    cluster = own_fleet.cluster
    mapping, src, dsts = own_fleet.new_mapping()
    assert cluster.master is not None
    settle(own_fleet, mapping, src, dsts)
    lock = _write_lock(cluster.master_dir / "master.db")
    try:
        for i in range(FILES):
            (src / f"f{i}.html").write_text(f"page {i}\n")
        # Both targets committed every file and reported it at once; the master cannot write.
        own_fleet.wait_converged(src, dsts)
        cluster.master.kill()
    finally:
        lock.rollback()
        lock.close()
    cluster.start_master()

    wait_each_change_once(own_fleet, mapping, FILES)
    # Nothing comes later to count twice: the targets have nothing left to send.
    assert job_log_stats(own_fleet, "mapping")[mapping["name"]]["files"] == 2 * (FILES + 1)
