"""The job log as /api/stats shows it, for the tests that kill a process holding commit reports
(test_master_killed.py, test_agent_killed.py): a settled mapping first, then every change
counted exactly once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from relaysync.testing.cluster import wait_until
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet


def job_log_stats(fleet: Fleet, by: str) -> dict[str, dict[str, Any]]:
    rows = fleet.cluster.api.get("/api/stats", params={"by": by}).json()
    return {r["key"]: r for r in rows}


def settle(fleet: Fleet, mapping: dict[str, Any], src: Path, dsts: list[Path]) -> None:
    """One file through to both targets and into the job log. A session restarted while a new
    mapping's routes reach the agents (RoutesStale) may commit a file twice, a second commit the
    job log rightly counts (once seen: 43 for 40): the tests count from a settled mapping."""
    (src / "warm.html").write_text("routes settled\n")
    fleet.wait_converged(src, dsts)
    wait_until(
        lambda: job_log_stats(fleet, "mapping").get(mapping["name"], {}).get("files") == 2,
        timeout_s=CONVERGE_TIMEOUT_S,
        what="the warm-up file in the job log for both targets",
    )


def wait_each_change_once(fleet: Fleet, mapping: dict[str, Any], files: int) -> None:
    """The job log holds the warm-up file and `files` more, each once, for t1 and t2."""

    def all_once() -> bool:
        by_mapping = job_log_stats(fleet, "mapping").get(mapping["name"], {})
        by_server = job_log_stats(fleet, "server")
        counted = [by_server.get(t, {}).get("files") for t in ("t1", "t2")]
        return by_mapping.get("changes") == files + 1 and counted == [files + 1, files + 1]

    wait_until(all_once, timeout_s=CONVERGE_TIMEOUT_S, what="every change in the job log once")
