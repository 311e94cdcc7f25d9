"""Crashes and outages: kill -9 of agents mid-burst, inotify overflow. Each test has its own fleet."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaysync.testing.cluster import wait_until
from tests._trees import temp_files
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet, start_fleet

pytestmark = pytest.mark.integration


@pytest.fixture
def own_fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = start_fleet(tmp_path)
    try:
        yield f
    finally:
        f.cluster.stop()


def test_target_killed_then_200_changes_converges(own_fleet: Fleet) -> None:
    _, src, dsts = own_fleet.new_mapping()
    (src / "before").write_text("before")
    own_fleet.wait_converged(src, dsts)
    own_fleet.cluster.agents["t1"].process.kill()
    for i in range(200):
        (src / f"f{i % 50}").write_text(f"version {i}")
        if i % 40 == 0:
            (src / f"d{i}").mkdir()
    (src / "before").unlink()
    own_fleet.cluster.start_agent("t1")
    own_fleet.wait_converged(src, dsts)


def test_target_killed_mid_transfer_leaves_old_or_new(own_fleet: Fleet) -> None:
    _, src, dsts = own_fleet.new_mapping(targets=("t1",))
    old = os.urandom(1000)
    (src / "big.bin").write_bytes(old)
    own_fleet.wait_converged(src, dsts)
    new = os.urandom(64 * 1024 * 1024)
    (src / "big.bin").write_bytes(new)
    # kill as soon as the temp file shows up on the target: mid-transfer
    wait_until(lambda: temp_files(dsts[0]), timeout_s=30, interval_s=0.002, what="transfer started")
    own_fleet.cluster.agents["t1"].process.kill()
    assert (dsts[0] / "big.bin").read_bytes() == old
    own_fleet.cluster.start_agent("t1")
    own_fleet.wait_converged(src, dsts)
    assert temp_files(dsts[0]) == []


def test_source_killed_mid_burst_converges(own_fleet: Fleet) -> None:
    _, src, dsts = own_fleet.new_mapping()
    for i in range(300):
        (src / f"burst-{i}").write_bytes(os.urandom(2000))
        if i == 150:
            own_fleet.cluster.agents["src"].process.kill()
    for i in range(0, 300, 7):
        (src / f"burst-{i}").unlink()
    own_fleet.cluster.start_agent("src")
    own_fleet.wait_converged(src, dsts)


def _journal_as_on_disk_before(journal: Path, head: int) -> None:
    """What a machine crash can leave of a journal written without fsync: the disk holds it as
    it was when its head was `head` (everything up to it released, nothing later written)."""
    for seg in journal.glob("*.seg"):
        seg.unlink()
    (journal / f"{head + 1:020d}.seg").touch()
    (journal / "released").write_text(str(head))


def test_fast_source_losing_its_journal_tail_in_a_machine_crash_still_sends_new_changes(own_fleet: Fleet) -> None:
    mapping, src, dsts = own_fleet.new_mapping(targets=("t1",), durability="fast")
    for i in range(6):
        (src / f"before-{i}").write_text(f"before {i}")
    own_fleet.wait_converged(src, dsts)

    def acked() -> bool:
        rows = own_fleet.cluster.api.get(f"/api/mappings/{mapping['id']}/status").json()["targets"]
        return bool(rows) and all(r["lag"] == 0 and r["watermark"] >= 6 for r in rows)

    wait_until(acked, timeout_s=CONVERGE_TIMEOUT_S, what="t1 acked every change")
    agent = own_fleet.cluster.agents["src"]
    agent.process.kill()
    # The machine "crashes": the journal's last 5 records never reached the disk, and the
    # journal was left open under a boot that is not this one.
    journal = agent.data_dir / "sources" / str(mapping["id"]) / "journal"
    _journal_as_on_disk_before(journal, head=1)
    (journal / "boot").write_text("a-boot-before-the-crash open fast\n")
    own_fleet.cluster.start_agent("src")
    (src / "probe").write_text("after the restart")
    own_fleet.wait_converged(src, dsts)
    # Journaled after the catch-up, with seqs t1 acked before the crash under the old journal id:
    for i in range(4):
        (src / f"after-{i}").write_text(f"after {i}")
    own_fleet.wait_converged(src, dsts)


def test_inotify_overflow_is_detected_and_rescanned(tmp_path: Path) -> None:
    knob = Path("/proc/sys/fs/inotify/max_queued_events")
    saved = knob.read_text()
    knob.write_text("16\n")  # new inotify instances get this queue size
    try:
        fleet = start_fleet(tmp_path)
    finally:
        knob.write_text(saved)
    try:
        _, src, dsts = fleet.new_mapping()
        for i in range(2000):
            (src / f"o{i}").write_bytes(b"x" * (i % 100))
        fleet.wait_converged(src, dsts, timeout_s=60)
        log = (fleet.cluster.base / "agent-src.log").read_text()
        assert "overflow" in log.lower()
    finally:
        fleet.cluster.stop()
