"""A mapping whose source cannot run (its folder cannot be made, or the agent's folder guard
refuses it) was only in its agent's log: the command succeeded, `relaysync status` showed it
healthy. Its agent now reports why with its figures, at once: the mapping status (API, CLI,
console) shows the reason until a retry starts the source, with events on both changes."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest

from relaysync.constants import SOURCE_RETRY_MAX_S
from relaysync.testing.cluster import wait_until
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet
from tests.integration.test_cli import cli_json

pytestmark = pytest.mark.integration

SEEN_TIMEOUT_S = 30.0  # failure to status: an early report (about 1 s), a 10 s interval at worst


def _status(fleet: Fleet, mapping_id: int) -> dict[str, Any]:
    status: dict[str, Any] = fleet.cluster.api.get(f"/api/mappings/{mapping_id}/status").json()
    return status


def _events(fleet: Fleet, kind: str, mapping_id: int) -> list[dict[str, Any]]:
    events = fleet.cluster.api.get("/api/events", params={"since": 0, "limit": 1000}).json()
    return [e for e in events if e["type"] == kind and e["data"]["mapping_id"] == mapping_id]


def test_a_source_that_cannot_start_shows_why_until_it_runs(fleet: Fleet, tmp_path: Path) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the source folder's parent should be")
    site = blocker / "site"
    created = time.monotonic()
    mapping = fleet.cluster.create_mapping("cannot-start", "src", site, [("t1", tmp_path / "copy")])
    m = mapping["id"]
    try:
        wait_until(
            lambda: _status(fleet, m)["source_error"],
            timeout_s=SEEN_TIMEOUT_S,
            what="the source's failure in the mapping status",
        )
        print(f"failure visible {time.monotonic() - created:.1f} s after the mapping was made")
        status = _status(fleet, m)
        assert str(site) in status["source_error"], status
        assert status["source_error_since"] is not None and status["source_error_attempts"] >= 1
        (listed,) = [x for x in cli_json(fleet, "status")["mappings"] if x["id"] == m]
        assert listed["source_error"] == status["source_error"]
        assert [e["data"]["server"] for e in _events(fleet, "source_failing", m)] == ["src"]

        blocker.unlink()  # the operator fixes it: the next retry (backoff up to 60 s) starts it
        site.mkdir(parents=True)
        wait_until(
            lambda: _status(fleet, m)["source_error"] == "",
            timeout_s=SOURCE_RETRY_MAX_S + SEEN_TIMEOUT_S,
            what="the failure cleared once the source runs",
        )
        assert _status(fleet, m)["source_error_since"] is None
        assert len(_events(fleet, "source_failure_ended", m)) == 1
        (site / "index.html").write_text("up")
        wait_until(
            lambda: (tmp_path / "copy" / "index.html").is_file(),
            timeout_s=CONVERGE_TIMEOUT_S,
            what="a file written in the folder reaching the target",
        )
    finally:
        fleet.cluster.api.delete(f"/api/mappings/{m}")


def test_a_source_folder_the_agent_refuses_shows_why(fleet: Fleet, tmp_path: Path) -> None:
    inside = fleet.cluster.agents["src"].data_dir / "not-a-site"
    mapping = fleet.cluster.create_mapping("refused", "src", inside, [("t1", tmp_path / "c")])
    m = mapping["id"]
    try:
        wait_until(
            lambda: _status(fleet, m)["source_error"],
            timeout_s=SEEN_TIMEOUT_S,
            what="the refusal in the mapping status",
        )
        assert str(inside) in _status(fleet, m)["source_error"]
    finally:
        fleet.cluster.api.delete(f"/api/mappings/{m}")
    assert not fleet.cluster.api.get(f"/api/mappings/{m}/status").is_success
