"""A target whose disk fills up: clear error, old file kept, no temp left (a large file keeps
its partial to resume), converges once space is back."""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaysync.constants import CHUNK_BYTES
from relaysync.testing.cluster import wait_until
from tests._trees import temp_files
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet

pytestmark = pytest.mark.integration


def _mounted(mount: Path, size: str) -> Iterator[Path]:
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    yield from _mounted(tmp_path / "small", "4m")


@pytest.fixture
def twelve_mib_disk(tmp_path: Path) -> Iterator[Path]:
    yield from _mounted(tmp_path / "small12", "12m")


def _settled(fleet: Fleet, src: Path, dst: Path) -> None:
    """Wait until the new mapping's links have settled (a warm-up file arrived): a link that
    restarts mid-transfer as the mapping's routes reach the agents leaves, for a while, the old
    session's partial beside the new one's (the successor-resume race, in the notes), which on
    these small disks is a full disk of its own (seen once in CI)."""
    wait_until(dst.is_dir, timeout_s=CONVERGE_TIMEOUT_S, what="target folder")
    (src / "warm.txt").write_text("routes settled")
    fleet.wait_converged(src, [dst])


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
    assert (
        dst / "small.txt"
    ).read_text() == "old"  # nothing after the failed change is applied out of order
    assert temp_files(dst) == []
    subprocess.run(["mount", "-o", "remount,size=64m", str(small_disk)], check=True)
    fleet.wait_converged(src, [dst], timeout_s=60)


def test_a_large_file_on_a_full_disk_keeps_what_fitted_and_resumes_once_space_is_back(
    fleet: Fleet, twelve_mib_disk: Path
) -> None:
    """Above RESUME_MIN_BYTES the file has a named partial: a full disk cuts it to whole chunks
    and keeps it, so each retry and the final transfer resend at most one chunk of what fitted."""
    n = "diskfull-large"
    src = fleet.base / n / "source"
    src.mkdir(parents=True)
    dst = twelve_mib_disk / "target"
    fleet.cluster.create_mapping(n, "src", src, [("t1", dst)])
    _settled(fleet, src, dst)
    size = 24 * CHUNK_BYTES
    (src / "large.bin").write_bytes(os.urandom(size))
    log = fleet.cluster.base / "agent-t1.log"

    def resumes() -> list[int]:
        return [int(m) for m in re.findall(r"resuming large.bin at offset (\d+)", log.read_text())]

    wait_until(lambda: len(resumes()) >= 2, timeout_s=30, what="two retries on the full disk")
    held = max(p.stat().st_size for p in dst.iterdir() if p.name.endswith(".part"))
    assert held >= 8 * CHUNK_BYTES  # about 11 MiB fit
    assert all(size - offset <= (size - held) + CHUNK_BYTES for offset in resumes())
    assert not (dst / "large.bin").exists()
    subprocess.run(["mount", "-o", "remount,size=64m", str(twelve_mib_disk)], check=True)
    fleet.wait_converged(src, [dst], timeout_s=60)
    assert size - resumes()[-1] <= (size - held) + CHUNK_BYTES
    assert temp_files(dst) == []


@pytest.fixture
def twenty_mib_disk(tmp_path: Path) -> Iterator[Path]:
    yield from _mounted(tmp_path / "small20", "20m")


def test_a_delta_on_a_full_disk_keeps_what_was_patched_and_resumes_once_space_is_back(
    fleet: Fleet, twenty_mib_disk: Path
) -> None:
    """A large file's new version arrives as a delta into its named partial; the disk holds the
    old version and only part of the new: the patched part is kept, cut to whole chunks, and the
    retries resume it whole, resending at most one chunk of it."""
    n = "diskfull-delta"
    src = fleet.base / n / "source"
    src.mkdir(parents=True)
    dst = twenty_mib_disk / "target"
    fleet.cluster.create_mapping(n, "src", src, [("t1", dst)])
    _settled(fleet, src, dst)
    size = 12 * CHUNK_BYTES
    (src / "large.bin").write_bytes(os.urandom(size))
    fleet.wait_converged(src, [dst], timeout_s=60)
    log = fleet.cluster.base / "agent-t1.log"
    start = len(log.read_text())
    (src / "large.bin").write_bytes(os.urandom(size))  # unrelated data: a delta about its size

    def events() -> list[int]:
        """What the target logged since: -1 for a full disk, else the offset a retry resumed at."""
        found = re.findall(
            r"code=(DISK_FULL)|resuming large.bin at offset (\d+)", log.read_text()[start:]
        )
        return [-1 if full else int(offset) for full, offset in found]

    wait_until(
        lambda: len([e for e in events() if e >= 0]) >= 2,
        timeout_s=30,
        what="a full disk during the delta, then two retries",
    )
    held = max((p.stat().st_size for p in dst.iterdir() if p.name.endswith(".part")), default=0)
    assert held >= 4 * CHUNK_BYTES  # about 8 MiB of the new version fit beside the old one
    seen = events()
    assert seen[0] == -1 and seen[1] >= 4 * CHUNK_BYTES, (
        f"the delta's partial was not kept: the first retry did not resume it ({seen[:3]})"
    )
    resumes = [e for e in seen if e >= 0]
    assert all(size - offset <= (size - held) + CHUNK_BYTES for offset in resumes)
    subprocess.run(["mount", "-o", "remount,size=64m", str(twenty_mib_disk)], check=True)
    fleet.wait_converged(src, [dst], timeout_s=60)
    assert size - [e for e in events() if e >= 0][-1] <= (size - held) + CHUNK_BYTES
    assert temp_files(dst) == []
