"""The whole path with the master's store on PostgreSQL instead of SQLite."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relaysync.testing.cluster import Cluster, wait_until
from tests._trees import snapshot
from tests.conftest import _create_database

pytestmark = [pytest.mark.integration, pytest.mark.postgres]


def test_replication_with_postgres_store(postgres_url: str, tmp_path: Path) -> None:
    url = _create_database(postgres_url, "integration_master")
    cluster = Cluster(tmp_path / "fleet")
    try:
        cluster.start_master(database_url=url)
        for name in ("src", "t1"):
            cluster.start_agent(name)
        src, dst = tmp_path / "src", tmp_path / "dst"
        src.mkdir()
        mapping = cluster.create_mapping("pg", "src", src, [("t1", dst)])
        for i in range(100):
            (src / f"f{i}").write_bytes(os.urandom(100))
        wait_until(
            lambda: snapshot(dst) == snapshot(src), timeout_s=30, what="target equal to source"
        )

        def logged() -> bool:
            rows = cluster.api.get(
                "/api/jobs", params={"mapping": mapping["id"], "limit": 500}
            ).json()
            return len(rows) == 100 and all(r["committed_targets"] == 1 for r in rows)

        try:
            wait_until(logged, timeout_s=30, what="job log on PostgreSQL")
        except Exception:
            print(
                cluster.api.get("/api/jobs", params={"mapping": mapping["id"], "limit": 5}).json()
            )
            print(cluster.api.get(f"/api/mappings/{mapping['id']}/status").json())
            raise
    finally:
        cluster.stop()
