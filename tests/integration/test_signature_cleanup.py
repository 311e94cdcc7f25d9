"""Real agents: deleting and renaming files leaves no signatures of the old paths in the
source's state dir (they are kept per path, one per large file sent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from relaysync.testing.cluster import wait_until
from tests.integration.conftest import CONVERGE_TIMEOUT_S, start_fleet

pytestmark = pytest.mark.integration


def test_deleting_and_renaming_files_leaves_no_signatures_behind(tmp_path: Path) -> None:
    fleet = start_fleet(tmp_path, agents=("src", "t1"))
    try:
        mapping, src, (dst,) = fleet.new_mapping(targets=("t1",))
        api = fleet.cluster.api

        def wire_so_far() -> int:
            return sum(
                a["wire_bytes"]
                for a in api.get("/api/advances", params={"mapping": mapping["name"]}).json()
            )

        for i in range(5):
            (src / f"upload-{i}.bin").write_bytes(os.urandom(3 * 1024 * 1024))
        fleet.wait_converged(src, [dst])
        sig_dir = next((fleet.cluster.agents["src"].data_dir / "sources").glob("*/signatures/sig"))
        wait_until(lambda: len(list(sig_dir.glob("*.sig"))) == 5, timeout_s=30, what="5 signatures")
        for i in range(4):
            (src / f"upload-{i}.bin").unlink()  # deleted: nothing can ever use its signature
        (src / "upload-4.bin").rename(src / "kept.bin")  # the signature moves to the new name
        fleet.wait_converged(src, [dst])
        wait_until(
            lambda: len(list(sig_dir.iterdir())) == 1,
            timeout_s=CONVERGE_TIMEOUT_S,
            what="one signature left",
        )
        wait_until(
            lambda: wire_so_far() >= 15 * 1024 * 1024,
            timeout_s=30,
            what="the copies in the job log",
        )
        before = wire_so_far()
        data = bytearray((src / "kept.bin").read_bytes())
        data[1000:1010] = b"0123456789"
        (src / "kept.bin").write_bytes(data)  # the renamed file's next change: a delta from it
        fleet.wait_converged(src, [dst])
        wait_until(lambda: wire_so_far() > before, timeout_s=30, what="the change in the job log")
        assert wire_so_far() - before < 256 * 1024, "the renamed file's change went whole"
        wait_until(
            lambda: len(list(sig_dir.iterdir())) == 1,
            timeout_s=CONVERGE_TIMEOUT_S,
            what="still one signature",
        )
    finally:
        fleet.cluster.stop()
