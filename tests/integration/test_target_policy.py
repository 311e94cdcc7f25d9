"""A target's symlink policy end to end, real master and agents: a link out of the folder is
refused on the target and shown in the job log with its remedy, never sent again by the periodic
comparison; the operator's `relaysync mapping set --symlinks any` lets it through."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from relaysync.testing.cluster import wait_until
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet, start_fleet
from tests.integration.test_cli import cli

pytestmark = pytest.mark.integration

COMPARE_INTERVAL_S = 0.5  # the source compares with its target this often (for convergence)
REMEDY = 'set the mapping\'s symlink policy to "any" if you trust the source'


def _refusals(fleet: Fleet, path: str) -> int:
    log = (fleet.cluster.base / "agent-t1.log").read_text()
    return sum(1 for line in log.splitlines() if "refused op" in line and repr(path) in line)


def _exceptions(fleet: Fleet, mapping_id: int) -> dict[str, str]:
    rows = fleet.cluster.api.get("/api/exceptions", params={"mapping": mapping_id}).json()
    return {r["path"]: r["error"] for r in rows}


def test_a_link_out_of_the_folder_is_refused_until_the_operator_trusts_the_source(
    tmp_path: Path,
) -> None:
    fleet = start_fleet(
        tmp_path,
        agents=("src", "t1"),
        extra_env={"RELAYSYNC_COMPARE_INTERVAL_S": str(COMPARE_INTERVAL_S)},
    )
    try:
        mapping, src, (dst,) = fleet.new_mapping(targets=("t1",))
        (src / "releases" / "6").mkdir(parents=True)
        (src / "releases" / "6" / "index.html").write_text("release 6\n")
        os.symlink("releases/6", src / "current")  # the atomic deploy: within the folder
        os.symlink("/etc/passwd", src / "passwd")
        (src / "last.html").write_text("after the links\n")
        wait_until(  # index.html, found by the scan of a new folder, waits HOT_FILE_S
            lambda: (dst / "last.html").exists() and (dst / "current" / "index.html").exists(),
            timeout_s=CONVERGE_TIMEOUT_S,
            what="the changes on the target",
        )
        assert (dst / "current" / "index.html").read_text() == "release 6\n"
        assert not os.path.lexists(dst / "passwd")  # the old code made it, and served /etc/passwd
        wait_until(
            lambda: REMEDY in _exceptions(fleet, mapping["id"]).get("passwd", ""),
            timeout_s=CONVERGE_TIMEOUT_S,
            what="the refusal and its remedy in the job log",
        )
        # Several periodic comparisons later the link was not sent again (a bounded negative
        # check: each comparison that sent it would have been refused, and logged, once more).
        refused = _refusals(fleet, "passwd")
        deadline = time.monotonic() + 8 * COMPARE_INTERVAL_S
        while time.monotonic() < deadline:
            assert _refusals(fleet, "passwd") == refused
            time.sleep(0.1)

        result = cli(fleet, "mapping", "set", mapping["name"], "--symlinks", "any")
        assert result.returncode == 0, result.stderr
        wait_until(
            lambda: os.path.islink(dst / "passwd"),
            timeout_s=CONVERGE_TIMEOUT_S,
            what="the link once the operator trusts the source",
        )
        assert os.readlink(dst / "passwd") == "/etc/passwd"
    finally:
        fleet.cluster.stop()
