"""Operator CLI end to end: `python -m relaysync status|log|stats|mapping` against a real fleet."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

import pytest

from relaysync.testing.cluster import wait_until
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet

pytestmark = pytest.mark.integration

CLI_TIMEOUT_S = 60.0
SIZES = (0, 1, 1000, 65_536, 300_000)  # bytes of each file the test writes


def cli(
    fleet: Fleet, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    token = (fleet.cluster.master_dir / "admin-token").read_text().strip()
    base = {k: v for k, v in os.environ.items() if not k.startswith("RELAYSYNC_")}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "relaysync",
            *args,
            "--master",
            fleet.cluster.api_url,
            "--token",
            token,
        ],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=base | (env or {}),
    )


def cli_json(fleet: Fleet, *args: str) -> Any:
    result = cli(fleet, *args, "--json")
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_status_log_and_stats_report_what_was_written(fleet: Fleet) -> None:
    base = fleet.base / "cli"
    src, dsts = base / "source", [base / "target-t1", base / "target-t2"]
    src.mkdir(parents=True)
    created = cli_json(
        fleet,
        "mapping",
        "add",
        "cli",
        "--source",
        f"src:{src}",
        "--target",
        f"t1:{dsts[0]}",
        "--target",
        f"t2:{dsts[1]}",
    )
    assert created["name"] == "cli" and {t["name"] for t in created["targets"]} == {"t1", "t2"}
    assert "cli" in [m["name"] for m in cli_json(fleet, "mapping", "list")]
    wait_until(
        lambda: all(d.is_dir() for d in dsts), timeout_s=CONVERGE_TIMEOUT_S, what="targets opened"
    )

    for i, size in enumerate(SIZES):
        (src / f"file{i}.bin").write_bytes(os.urandom(size))
    fleet.wait_converged(src, dsts)
    expected_files, expected_bytes = len(SIZES), sum(SIZES)

    seen: list[Any] = []

    def stats_settled() -> dict[str, Any] | None:
        rows = {r["key"]: r for r in cli_json(fleet, "stats", "--by", "mapping")}
        seen[:] = [rows.get("cli")]
        row = rows.get("cli")
        return row if row and row["files"] >= 2 * expected_files else None

    try:
        stats = wait_until(
            stats_settled, timeout_s=CONVERGE_TIMEOUT_S, interval_s=0.5, what="stats"
        )
    except Exception:
        print(
            f"--- last stats row: {seen}\n--- job log: {cli_json(fleet, 'log', '--mapping', 'cli')}"
        )
        raise
    assert stats["files"] == 2 * expected_files  # each file committed on two targets
    assert stats["changes"] == expected_files and stats["change_bytes"] == expected_bytes
    assert stats["wire_bytes"] >= 2 * expected_bytes  # random data: no delta, no compression gain
    assert stats["failures"] == 0 and stats["file_ms_p50"] is not None

    status = cli_json(fleet, "status")
    mine = next(m for m in status["mappings"] if m["name"] == "cli")
    assert {t["target_name"] for t in mine["targets"]} == {"t1", "t2"}
    assert all(t["lag"] == 0 and t["watermark"] >= expected_files for t in mine["targets"])
    assert mine["open_exceptions"] == 0
    assert {s["name"]: s["state"] for s in status["servers"]} == {
        "src": "up",
        "t1": "up",
        "t2": "up",
    }

    log = cli_json(fleet, "log", "--mapping", "cli", "--limit", "100")
    writes = {r["path"]: r for r in log if r["op"] == "write"}
    assert {p: r["size"] for p, r in writes.items()} == {
        f"file{i}.bin": s for i, s in enumerate(SIZES)
    }
    assert all(r["committed_targets"] == r["total_targets"] == 2 for r in writes.values())
    assert cli_json(fleet, "log", "--mapping", "cli", "--failed") == []

    by_server = {r["key"]: r for r in cli_json(fleet, "stats", "--by", "server")}
    assert by_server["t1"]["files"] >= expected_files and by_server["t2"]["files"] >= expected_files

    exported = cli(fleet, "stats", "--by", "mapping", "--csv")
    assert exported.returncode == 0, exported.stderr
    header, *lines = exported.stdout.splitlines()
    assert header.startswith("key,files,wire_bytes,")
    assert any(line.startswith(f"cli,{2 * expected_files},") for line in lines)

    removed = cli_json(fleet, "mapping", "remove", "cli")
    assert removed["removed"]["name"] == "cli"
    missing = cli(fleet, "log", "--mapping", "cli")
    assert missing.returncode == 15 and "not found" in missing.stderr


def test_bad_token_exits_with_the_auth_code(fleet: Fleet) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "relaysync",
            "status",
            "--master",
            fleet.cluster.api_url,
            "--token",
            "wrong",
        ],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env={k: v for k, v in os.environ.items() if not k.startswith("RELAYSYNC_")},
    )
    assert result.returncode == 12 and "invalid token" in result.stderr


def test_master_found_from_its_data_dir(fleet: Fleet) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAYSYNC_")}
    env["RELAYSYNC_MASTER_DATA"] = str(fleet.cluster.master_dir)
    result = subprocess.run(
        [sys.executable, "-m", "relaysync", "status", "--json"],
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
        env=env,
    )
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["summary"]["servers_up"] == 3
