"""A relay between a source and a child while a source file cannot be read (mode 000, the source
agent without CAP_DAC_OVERRIDE, as when it runs as another user), with real processes on a
manual chain src > r1 > c1.

1. The relay's comparison with its child keeps the file the source cannot read: before the fix
   the relay did not know it, and its comparison deleted the child's copy (its own tree lacks it).
2. A file the source sends again once it can read it reaches the relay's child at once: before
   the fix the relay skipped it (its seq was below the child's watermark), and the child got it
   only at the relay's periodic comparison (600 s).
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaysync.testing.cluster import Cluster, wait_until
from tests.integration._modes import journaled_ops as _journaled
from tests.integration.conftest import CONVERGE_TIMEOUT_S
from tests.integration.test_unreadable_source import NO_DAC, _write_unreadable

pytestmark = pytest.mark.integration

CHAIN = [["src", "r1"], ["r1", "c1"]]
RELAY_COMPARE_S = 2.0  # test 1: the relay compares with its child this often


def _cluster(tmp_path: Path, relay_env: dict[str, str]) -> Cluster:
    probe = tmp_path / "probe"
    probe.write_text("x")
    probe.chmod(0)
    if (
        shutil.which("setpriv") is None
        or subprocess.run([*NO_DAC, "cat", str(probe)], capture_output=True, check=False).returncode
        == 0
    ):
        pytest.skip("setpriv cannot drop CAP_DAC_OVERRIDE here")
    cluster = Cluster(tmp_path / "fleet")
    cluster.start_master()
    cluster.start_agent("src", prefix=NO_DAC)
    cluster.start_agent("r1", env=relay_env)
    cluster.start_agent("c1")
    return cluster


@pytest.fixture
def comparing(tmp_path: Path) -> Iterator[Cluster]:
    cluster = _cluster(tmp_path, {"RELAYSYNC_COMPARE_INTERVAL_S": str(RELAY_COMPARE_S)})
    try:
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    cluster = _cluster(tmp_path, {})  # the periodic comparison 600 s apart, as by default
    try:
        yield cluster
    finally:
        cluster.stop()


def _chain(cluster: Cluster, base: Path) -> tuple[int, Path, Path, Path]:
    """A mapping src > r1 > c1 (c1 down until the chain is in force: never served by src)."""
    src, relay, child = base / "source", base / "r1", base / "c1"
    src.mkdir(parents=True, exist_ok=True)
    cluster.agents["c1"].process.stop()
    mapping = cluster.create_mapping("m", "src", src, [("r1", relay), ("c1", child)])
    mapping_id = int(mapping["id"])
    r = cluster.api.put(
        f"/api/mappings/{mapping_id}/routing", json={"mode": "manual", "hops": CHAIN}
    )
    assert r.status_code in (200, 201), r.text
    wait_until(lambda: relay.is_dir(), timeout_s=CONVERGE_TIMEOUT_S, what="r1 opened")
    return mapping_id, src, relay, child


def test_a_relay_keeps_on_its_child_what_the_source_cannot_read(
    comparing: Cluster, tmp_path: Path
) -> None:
    base = tmp_path / "m"
    child = base / "c1"
    child.mkdir(parents=True)
    for name in ("a.txt", "locked.txt"):
        (child / name).write_text(f"same {name}")  # c1 pre-seeded
    (child / "stray.txt").write_text("the source has no such file")
    (base / "source").mkdir()
    (base / "source" / "a.txt").write_text("same a.txt")
    _write_unreadable(base / "source" / "locked.txt", "same locked.txt")
    _, src, relay, child = _chain(comparing, base)
    wait_until(lambda: (relay / "a.txt").exists(), timeout_s=CONVERGE_TIMEOUT_S, what="r1 synced")
    assert not (relay / "locked.txt").exists()  # r1 synced while the source cannot read it
    comparing.start_agent("c1")
    # r1's comparison with c1 erases what only c1 has, in the Erase that would take locked.txt
    wait_until(
        lambda: not (child / "stray.txt").exists(),
        timeout_s=CONVERGE_TIMEOUT_S,
        what="r1 compared with c1",
    )
    assert (child / "locked.txt").read_text() == "same locked.txt"
    (src / "locked.txt").chmod(0o644)  # readable: the source's re-check sends it along the chain
    wait_until(
        lambda: (relay / "locked.txt").exists(), timeout_s=CONVERGE_TIMEOUT_S, what="r1 has it"
    )
    assert (child / "locked.txt").read_text() == "same locked.txt"


def test_a_file_read_again_reaches_the_relays_child_at_once(
    cluster: Cluster, tmp_path: Path
) -> None:
    mapping_id, src, relay, child = _chain(cluster, tmp_path / "m")
    cluster.start_agent("c1")
    (src / "a.txt").write_text("first")
    wait_until(lambda: (child / "a.txt").exists(), timeout_s=CONVERGE_TIMEOUT_S, what="a.txt")
    # Journaled readable, unreadable when sent (held by manual mode meanwhile).
    r = cluster.api.put(f"/api/mappings/{mapping_id}/mode", json={"mode": "manual"})
    assert r.status_code == 200, r.text
    log = cluster.base / "agent-src.log"
    wait_until(lambda: "(manual mode)" in log.read_text(), timeout_s=30, what="manual mode")
    journal = cluster.agents["src"].data_dir / "sources" / str(mapping_id) / "journal"
    (src / "c.txt").write_text("journaled readable")
    wait_until(
        lambda: ("write", "c.txt") in _journaled(journal), timeout_s=30, what="c.txt journaled"
    )
    (src / "c.txt").chmod(0)
    (src / "d.txt").write_text("sent with it")
    wait_until(
        lambda: ("write", "d.txt") in _journaled(journal), timeout_s=30, what="d.txt journaled"
    )
    assert cluster.api.post(f"/api/mappings/{mapping_id}/send").status_code == 200
    wait_until(lambda: (child / "d.txt").exists(), timeout_s=CONVERGE_TIMEOUT_S, what="d.txt")
    assert not (relay / "c.txt").exists() and not (child / "c.txt").exists()
    (src / "c.txt").chmod(0o644)  # no write to the file: the source's link reads it again
    wait_until(lambda: (relay / "c.txt").exists(), timeout_s=CONVERGE_TIMEOUT_S, what="r1 has it")
    wait_until(
        lambda: (
            (child / "c.txt").exists() and (child / "c.txt").read_text() == "journaled readable"
        ),
        timeout_s=CONVERGE_TIMEOUT_S,
        what="c1 has it, long before r1's next comparison",
    )
