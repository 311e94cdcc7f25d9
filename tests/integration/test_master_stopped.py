"""A graceful stop of the master (SIGTERM) with commit reports in its job log's memory: it
acknowledges them before it closes the agents' links, so the agents do not send them again to
the next run, and what the store does not deduplicate counts once. Was: the links closed before
the last flush was acknowledged, and every stop counted that flush's catch-up records (and
failure attempts, purges, events) twice.

The job log is held back by an exclusive lock of the test's own on the job-log tables of the
master's PostgreSQL database (reads go on, and so do the other tables' writes, so the links
stay up however long it takes); the lock goes right after the SIGTERM, as a store comes back
during a stop. The counter that shows a report taken twice is the target's catch-up files: a
compare at the start of a mapping's session erases what the source does not have (seq 0: no
journal seq to key it, so a repeat counts again)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
from pathlib import Path

import psycopg
import pytest

from relaysync.testing.cluster import Cluster, wait_until
from tests._store_locks import table_locked
from tests._trees import snapshot
from tests.conftest import _create_database
from tests.integration.conftest import CONVERGE_TIMEOUT_S

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

JOB_LOG_TABLES = "changes, watermarks, watermark_advances, exceptions, catchup"
FILES = 10
STOPPED_S = 60.0  # generous: the stop takes the last flush and a round trip per agent


def _catchup_files(url: str) -> dict[str, int]:
    """Catch-up files per target node, from the master's database."""
    with psycopg.connect(url.replace("postgresql+psycopg://", "postgresql://")) as conn:
        rows = conn.execute("SELECT target_node, files FROM catchup").fetchall()
    return {node: files for node, files in rows}


def _queued_bytes(port: int) -> int:
    """Bytes in the socket queues of the master's control connections, either way: 0 when the
    master has read everything the agents sent."""
    out = subprocess.run(
        ["ss", "-tnH", "state", "established", f"( sport = :{port} or dport = :{port} )"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(int(a) + int(b) for a, b in re.findall(r"^\s*(\d+)\s+(\d+)", out, re.M))


def _files(cluster: Cluster) -> dict[str, int]:
    rows = cluster.api.get("/api/stats", params={"by": "server"}).json()
    return {r["key"]: r["files"] for r in rows}


def _converged(src: Path, dsts: list[Path]) -> bool:
    want = snapshot(src)
    return all(snapshot(d) == want for d in dsts)


def _start(cluster: Cluster, url: str) -> None:
    cluster.start_master(database_url=url)
    for name in ("src", "t1", "t2"):
        cluster.start_agent(name, wait=False)
    for name in ("src", "t1", "t2"):
        cluster.wait_agent_up(name)


def test_a_master_stopped_with_reports_in_memory_acknowledges_them_before_the_links_close(
    postgres_url: str, tmp_path: Path
) -> None:
    url = _create_database(postgres_url, f"stopped_{os.getpid()}")
    cluster = Cluster(tmp_path / "fleet")
    try:
        _start(cluster, url)
        src, dsts = tmp_path / "source", [tmp_path / "t1", tmp_path / "t2"]
        for d in (src, *dsts):
            d.mkdir()
        for i in range(FILES):
            (src / f"f{i}.html").write_text(f"page {i}\n")
        for d in dsts:  # what the first compare erases: a catch-up record on each target
            for i in range(3):
                (d / f"stale{i}.html").write_text("stale\n")
        assert cluster.master is not None
        control_port = int((cluster.master_dir / "control-port").read_text())
        with table_locked(url, JOB_LOG_TABLES):  # job-log writes wait; reads do not
            cluster.create_mapping("m", "src", src, [("t1", dsts[0]), ("t2", dsts[1])])
            wait_until(
                lambda: _converged(src, dsts),
                timeout_s=CONVERGE_TIMEOUT_S,
                what="targets equal to the source",
            )
            wait_until(
                lambda: _queued_bytes(control_port) == 0,
                timeout_s=CONVERGE_TIMEOUT_S,
                what="every report read by the master",
            )
            assert _catchup_files(url) == {}  # in the master's memory only
            os.kill(cluster.master.pid, signal.SIGTERM)
        assert cluster.master.popen is not None
        assert cluster.master.popen.wait(STOPPED_S) == 0, cluster.master.log_tail()
        first = _catchup_files(url)
        assert sorted(first.values()) == [1, 1], first  # the erase, on each target
        cluster.start_master(database_url=url)
        for name in ("t1", "t2"):
            cluster.wait_agent_up(name)
        # A change after the restart: once the job log has it, it has whatever the targets
        # sent again before it (reports go first and in order on a new session).
        before = _files(cluster)
        (src / "after.html").write_text("after the restart\n")

        def after_logged() -> bool:
            return _files(cluster) == {t: n + 1 for t, n in before.items()}

        wait_until(after_logged, timeout_s=CONVERGE_TIMEOUT_S, what="after.html in the job log")
        assert _catchup_files(url) == first  # nothing counted twice
    finally:
        cluster.stop()
