"""A target whose disk fills up: clear error, old file kept, no temp left, converges once space is back."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaysync.testing.cluster import wait_until
from tests._trees import temp_files
from tests.integration.conftest import Fleet

pytestmark = pytest.mark.integration


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_on_target_is_retried_and_converges(fleet: Fleet, small_disk: Path) -> None:
    n = "diskfull"
    src = fleet.base / n / "source"
    src.mkdir(parents=True)
    dst = small_disk / "target"
    fleet.cluster.create_mapping(n, "src", src, [("t1", dst)])
    wait_until(dst.is_dir, timeout_s=30, what="target folder")
    (src / "small.txt").write_text("old")
    wait_until(lambda: (dst / "small.txt").exists(), timeout_s=30, what="small file")
    (src / "big.bin").write_bytes(os.urandom(6 * 1024 * 1024))  # larger than the 4 MiB disk
    (src / "small.txt").write_text("new")
    log = fleet.cluster.base / "agent-src.log"
    wait_until(lambda: "DISK_FULL" in log.read_text(), timeout_s=30, what="a disk-full refusal")
    assert not (dst / "big.bin").exists()
    assert (dst / "small.txt").read_text() == "old"  # nothing after the failed change is applied out of order
    assert temp_files(dst) == []
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    fleet.wait_converged(src, [dst], timeout_s=60)
