"""Source-to-target latency in the statistics, and the retention command, with real agents."""

from __future__ import annotations

import os
import time
from typing import Any

import pytest

from relaysync.testing.cluster import wait_until
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet
from tests.integration.test_cli import cli_json

pytestmark = pytest.mark.integration

SIZES = (10, 200_000, 3_000_000)  # bytes of the files written, one after the other
ROUNDING_MS = 0.002  # the stats round to microseconds


def _write_and_time_arrival(src: Any, dst: Any, name: str, data: bytes) -> float:
    """Write one file on the source; return the seconds until it is whole on the target."""
    written = time.time()
    (src / name).write_bytes(data)
    target = dst / name

    def arrived() -> bool:
        try:
            return target.stat().st_size == len(data) and target.read_bytes() == data
        except FileNotFoundError:
            return False

    wait_until(
        arrived, timeout_s=CONVERGE_TIMEOUT_S, interval_s=0.005, what=f"{name} on the target"
    )
    return time.time() - written


def test_latency_percentiles_lie_between_transfer_time_and_wall_time(fleet: Fleet) -> None:
    mapping, src, (dst,) = fleet.new_mapping(targets=("t1",))
    walls_ms = [
        1000 * _write_and_time_arrival(src, dst, f"f{i}", os.urandom(size))
        for i, size in enumerate(SIZES)
    ]
    api = fleet.cluster.api

    def settled() -> dict[str, Any] | None:
        rows = {r["key"]: r for r in api.get("/api/stats", params={"by": "mapping"}).json()}
        row = rows.get(mapping["name"])
        return row if row and row["files"] >= len(SIZES) else None

    row = wait_until(settled, timeout_s=CONVERGE_TIMEOUT_S, interval_s=0.2, what="stats")
    assert row["files"] == len(SIZES)
    latencies = [row[f"latency_ms_p{p}"] for p in (50, 95, 99)]
    transfers = [row[f"file_ms_p{p}"] for p in (50, 95, 99)]
    print(f"wall ms {walls_ms}, latency percentiles {latencies}, transfer percentiles {transfers}")
    assert all(lat is not None and lat > 0 for lat in latencies)
    assert (
        latencies[2] <= max(walls_ms) + ROUNDING_MS
    )  # journaled after the write, committed before seen
    assert all(lat + ROUNDING_MS >= xfer for lat, xfer in zip(latencies, transfers, strict=True))
    by_server = {r["key"]: r for r in api.get("/api/stats", params={"by": "server"}).json()}
    assert by_server["t1"]["latency_ms_p50"] is not None


def test_retention_command_shows_and_sets_the_days(fleet: Fleet) -> None:
    shown = cli_json(fleet, "retention")
    assert (shown["changes_days"], shown["advances_days"], shown["alerts_days"]) == (30, 90, 90)
    changed = cli_json(
        fleet,
        "retention",
        "--changes-days",
        "14",
        "--recovery-jobs-days",
        "0",
        "--alerts-days",
        "30",
    )
    assert (
        changed["changes_days"],
        changed["advances_days"],
        changed["recovery_jobs_days"],
        changed["alerts_days"],
    ) == (14, 90, 0, 30)
    assert cli_json(fleet, "retention")["changes_days"] == 14
