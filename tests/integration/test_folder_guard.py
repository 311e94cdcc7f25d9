"""An agent refuses a target folder outside its allowed_roots, tells the master why (through the
source's failed-hop report), and keeps running its other mappings; a source that cannot start is
retried with backoff while the others run."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from relaysync.constants import SOURCE_RETRY_MAX_S
from relaysync.testing.cluster import Cluster, wait_until
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet

pytestmark = pytest.mark.integration


@pytest.fixture
def confined(tmp_path: Path) -> Iterator[Fleet]:
    cluster = Cluster(tmp_path / "fleet")
    cluster.start_master()
    cluster.start_agent("src")
    cluster.start_agent("t1", env={"RELAYSYNC_ALLOWED_ROOTS": str(tmp_path / "allowed")})
    try:
        yield Fleet(cluster, tmp_path)
    finally:
        cluster.stop()


def _hop_failures(fleet: Fleet) -> list[dict]:
    events = fleet.cluster.api.get("/api/events", params={"since": 0, "limit": 1000}).json()
    rows = events["events"] if isinstance(events, dict) else events
    return [e["data"] for e in rows if e["type"] == "hop_failed"]


def test_a_target_outside_allowed_roots_is_refused_and_reported(confined: Fleet) -> None:
    base = confined.base
    for name in ("a", "b"):
        (base / name).mkdir()
        (base / name / "f.txt").write_text(name)
    refused = confined.cluster.create_mapping(
        "out", "src", base / "a", [("t1", base / "elsewhere")]
    )
    confined.cluster.create_mapping("in", "src", base / "b", [("t1", base / "allowed" / "b")])
    wait_until(
        lambda: (base / "allowed" / "b" / "f.txt").exists(),
        timeout_s=CONVERGE_TIMEOUT_S,
        what="the allowed mapping replicated",
    )
    wait_until(
        lambda: any(e["mapping_id"] == refused["id"] for e in _hop_failures(confined)),
        timeout_s=CONVERGE_TIMEOUT_S,
        what="the refusal reported to the master",
    )
    error = next(e["error"] for e in _hop_failures(confined) if e["mapping_id"] == refused["id"])
    assert "is refused by this agent" in error and "outside allowed_roots" in error, error
    assert not (base / "elsewhere").exists()


def test_a_target_that_cannot_be_opened_costs_its_own_mapping_only(confined: Fleet) -> None:
    """A target folder that cannot be made (here a file where a directory should be; permission
    denied or a full disk alike) failed the agent's whole assignment: its control link dropped
    and came back in a loop, and none of its other mappings ran."""
    base = confined.base
    for name in ("a", "b"):
        (base / name).mkdir()
        (base / name / "f.txt").write_text(name)
    (base / "allowed").mkdir()
    (base / "allowed" / "blocker").write_text("a file, not a directory")
    broken = confined.cluster.create_mapping(
        "broken", "src", base / "a", [("t1", base / "allowed" / "blocker" / "a")]
    )
    confined.cluster.create_mapping("in", "src", base / "b", [("t1", base / "allowed" / "b")])
    wait_until(
        lambda: (base / "allowed" / "b" / "f.txt").exists(),
        timeout_s=CONVERGE_TIMEOUT_S,
        what="the other mapping replicated",
    )
    wait_until(
        lambda: any(e["mapping_id"] == broken["id"] for e in _hop_failures(confined)),
        timeout_s=CONVERGE_TIMEOUT_S,
        what="the failure reported to the master",
    )
    error = next(e["error"] for e in _hop_failures(confined) if e["mapping_id"] == broken["id"])
    assert "cannot open it" in error, error


def test_a_source_that_cannot_start_costs_its_own_mapping_only_and_is_retried(
    confined: Fleet,
) -> None:
    """A source folder that cannot be made (here a file where a directory should be; permission
    denied or a full state disk alike) stopped the whole agent, and again at every start (the
    saved assignment names it). Now the mapping is retried with backoff, the others run."""
    base, src = confined.base, confined.cluster.agents["src"]
    (base / "b").mkdir()
    (base / "b" / "f.txt").write_text("b")
    (base / "blocker").write_text("a file, not a directory")
    confined.cluster.create_mapping(
        "broken", "src", base / "blocker" / "a", [("t1", base / "allowed" / "a")]
    )
    confined.cluster.create_mapping("in", "src", base / "b", [("t1", base / "allowed" / "b")])
    wait_until(
        lambda: (base / "allowed" / "b" / "f.txt").exists(),
        timeout_s=CONVERGE_TIMEOUT_S,
        what="the other mapping replicated",
    )
    wait_until(
        lambda: "stopped or cannot start, will retry" in src.process.log_tail(200),
        timeout_s=CONVERGE_TIMEOUT_S,
        what="the failure logged",
    )
    assert src.process.alive(), src.process.log_tail()
    (base / "blocker").unlink()  # the operator fixes it: the next retry starts the source
    (base / "blocker" / "a").mkdir(parents=True)
    (base / "blocker" / "a" / "f.txt").write_text("a")
    wait_until(
        lambda: (base / "allowed" / "a" / "f.txt").exists(),
        timeout_s=SOURCE_RETRY_MAX_S + CONVERGE_TIMEOUT_S,
        what="the source started by a retry",
    )
    assert src.process.alive()
