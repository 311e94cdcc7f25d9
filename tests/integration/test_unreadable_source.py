"""A source file the source agent cannot read (mode 000, the agent without CAP_DAC_OVERRIDE, as
when it runs as a user other than root), with real processes: it is never taken for gone or
deleted on the target, every other file keeps flowing, the failure is in the master's job log
with what to do, and once its permissions are fixed it arrives with no new write to it."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaysync.testing.cluster import Cluster, wait_until
from tests.integration._modes import journaled_ops as _journaled
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet

pytestmark = pytest.mark.integration

# The source agent stays root but loses what lets root read any file: a file of mode 000 is as
# unreadable to it as to an agent run as another user.
NO_DAC = ("setpriv", "--bounding-set=-dac_override,-dac_read_search")


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
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
    try:
        cluster.start_agent("src", prefix=NO_DAC)
        cluster.start_agent("t1")
        yield Fleet(cluster, tmp_path)
    finally:
        cluster.stop()


def _write_unreadable(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0)  # mode 000 from the start
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _failures(fleet: Fleet, path: str) -> list[dict]:
    rows = fleet.cluster.api.get("/api/exceptions", params={"limit": 1000}).json()
    return [r for r in rows if r["path"] == path]


def test_an_unreadable_file_is_kept_reported_and_sent_once_readable(fleet: Fleet) -> None:
    """Before the fix, the scan stopped at the file: the source mapping failed and restarted,
    its rescan stopping there each time, so nothing else of the folder went out; and a file
    that could not be read when it was sent was skipped as gone, silently."""
    mapping, src, (dst,) = fleet.new_mapping(targets=("t1",))
    (src / "a.txt").write_text("before")
    fleet.wait_converged(src, [dst])

    # 1. unreadable when written: no change journaled (nor a delete), the rest goes on
    _write_unreadable(src / "secret.txt", "written unreadable")
    (src / "b.txt").write_text("written after it")
    wait_until(lambda: (dst / "b.txt").exists(), timeout_s=CONVERGE_TIMEOUT_S, what="b.txt")
    assert not (dst / "secret.txt").exists() and (dst / "a.txt").read_text() == "before"
    (src / "secret.txt").chmod(0o644)
    fleet.wait_converged(src, [dst])

    # 2. readable when journaled, unreadable when sent (held by manual mode meanwhile)
    r = fleet.cluster.api.put(f"/api/mappings/{mapping['id']}/mode", json={"mode": "manual"})
    assert r.status_code == 200, r.text
    log = fleet.cluster.base / "agent-src.log"
    wait_until(lambda: "(manual mode)" in log.read_text(), timeout_s=30, what="manual mode")
    journal = fleet.cluster.agents["src"].data_dir / "sources" / str(mapping["id"]) / "journal"
    (src / "c.txt").write_text("journaled readable")
    wait_until(
        lambda: ("write", "c.txt") in _journaled(journal), timeout_s=30, what="c.txt journaled"
    )
    (src / "c.txt").chmod(0)
    (src / "d.txt").write_text("sent with it")
    wait_until(
        lambda: ("write", "d.txt") in _journaled(journal), timeout_s=30, what="d.txt journaled"
    )
    assert fleet.cluster.api.post(f"/api/mappings/{mapping['id']}/send").status_code == 200
    wait_until(lambda: (dst / "d.txt").exists(), timeout_s=CONVERGE_TIMEOUT_S, what="d.txt")
    wait_until(lambda: _failures(fleet, "c.txt"), timeout_s=CONVERGE_TIMEOUT_S, what="reported")
    [failure] = _failures(fleet, "c.txt")
    assert "Permission denied" in failure["error"] and "Fix its permissions" in failure["error"]
    assert failure["resolved_at"] is None and not (dst / "c.txt").exists()
    assert "cannot read c.txt on the source (EACCES)" in log.read_text()

    (src / "c.txt").chmod(0o644)  # the fix: no write to the file, no new release
    wait_until(
        lambda: (dst / "c.txt").exists() and (dst / "c.txt").read_text() == "journaled readable",
        timeout_s=CONVERGE_TIMEOUT_S,
        what="c.txt once readable",
    )
    wait_until(
        lambda: _failures(fleet, "c.txt")[0]["resolved_at"] is not None,
        timeout_s=CONVERGE_TIMEOUT_S,
        what="the failure resolved",
    )
    fleet.wait_converged(src, [dst])
