"""Large transfers: resume after the receiver is killed, and the per-link bandwidth limit."""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaysync.constants import CHUNK_BYTES
from relaysync.testing.cluster import Cluster, wait_until
from tests.integration.conftest import Fleet

pytestmark = pytest.mark.integration

LIMIT_MBIT = 200.0  # 25 MB/s: a 200 MiB file takes about 8 s


@pytest.fixture
def limited_fleet(tmp_path: Path) -> Iterator[Fleet]:
    cluster = Cluster(tmp_path / "fleet")
    cluster.start_master()
    cluster.start_agent("src", env={"RELAYSYNC_BANDWIDTH_LIMIT_MBIT": str(LIMIT_MBIT)})
    cluster.start_agent("t1")
    try:
        yield Fleet(cluster, tmp_path)
    finally:
        cluster.stop()


def _partials(root: Path) -> list[Path]:
    return [p for p in root.iterdir() if p.name.endswith(".part")]


def _write_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size // CHUNK_BYTES):
            f.write(os.urandom(CHUNK_BYTES))


def test_receiver_killed_mid_200mib_resumes(limited_fleet: Fleet) -> None:
    _, src, (dst,) = limited_fleet.new_mapping(targets=("t1",))
    size = 200 * CHUNK_BYTES
    _write_random(src / "big.bin", size)
    part = wait_until(
        lambda: [p for p in _partials(dst) if p.stat().st_size > 60 * CHUNK_BYTES],
        timeout_s=60,
        interval_s=0.01,
        what="a partial of 60 MiB",
    )[0]
    limited_fleet.cluster.agents["t1"].process.kill()
    held = part.stat().st_size
    assert not (dst / "big.bin").exists()
    limited_fleet.cluster.start_agent("t1")
    limited_fleet.wait_converged(src, [dst], timeout_s=60)
    log = (limited_fleet.cluster.base / "agent-t1.log").read_text()
    offsets = [int(m) for m in re.findall(r"resuming big.bin at offset (\d+)", log)]
    assert offsets, "the transfer should have resumed, not restarted"
    sent_again = size - offsets[-1]
    assert sent_again <= (size - held) + CHUNK_BYTES
    assert _partials(dst) == []


def _partial_of(root: Path, name: str) -> int:
    """The size of `name`'s partial (0 if there is none)."""
    for p in _partials(root):
        if p.name.startswith(f".relaysync.{name}."):
            try:
                return p.stat().st_size
            except FileNotFoundError:
                return 0
    return 0


def test_source_killed_mid_batch_keeps_the_large_file_already_verified(
    limited_fleet: Fleet,
) -> None:
    """Two large files in one journal batch (one Checkpoint after both); the source dies while the
    second streams. The first, received whole and verified but not yet committed, is not sent again."""
    cluster = limited_fleet.cluster
    _, src, (dst,) = limited_fleet.new_mapping(targets=("t1",))
    (src / "warm").write_text("x")
    limited_fleet.wait_converged(src, [dst])
    cluster.agents[
        "t1"
    ].process.kill()  # both files written while the target is away: one replay batch
    size = 32 * CHUNK_BYTES
    _write_random(src / "a.bin", size)
    _write_random(src / "b.bin", size)
    cluster.start_agent("t1")
    wait_until(
        lambda: _partial_of(dst, "a.bin") == size and _partial_of(dst, "b.bin") > 4 * CHUNK_BYTES,
        timeout_s=60,
        interval_s=0.005,
        what="a.bin received whole, b.bin under way",
    )
    cluster.agents["src"].process.kill()
    cluster.start_agent("src", env={"RELAYSYNC_BANDWIDTH_LIMIT_MBIT": str(LIMIT_MBIT)})
    limited_fleet.wait_converged(src, [dst], timeout_s=60)
    log = (cluster.base / "agent-t1.log").read_text()
    offsets = [int(m) for m in re.findall(r"resuming a.bin at offset (\d+)", log)]
    assert offsets, "a.bin should have resumed, not restarted"
    assert size - offsets[-1] <= CHUNK_BYTES  # held whole: at most one chunk again (here none)
    assert re.search(r"resuming b.bin at offset [1-9]", log), "b.bin, cut mid-file, resumes too"
    assert _partials(dst) == []


def test_interrupted_delta_of_a_large_file_resumes(limited_fleet: Fleet) -> None:
    """An update of a large file goes as a delta; kill -9 the target mid-delta: what it had
    patched (a prefix of the new version, in that version's partial) is not sent again."""
    cluster = limited_fleet.cluster
    mapping, src, (dst,) = limited_fleet.new_mapping(targets=("t1",))
    size = 64 * CHUNK_BYTES
    params = {"mapping": str(mapping["id"]), "target": "t1", "limit": "1"}

    def newest_advance() -> dict[str, int]:
        rows = cluster.api.get("/api/advances", params=params).json()
        return rows[0] if rows else {"id": 0}

    _write_random(src / "big.bin", size)
    limited_fleet.wait_converged(src, [dst], timeout_s=60)
    first = wait_until(
        lambda: (a := newest_advance()).get("wire_bytes", 0) > 0 and a,
        timeout_s=30,
        what="the first copy reported",
    )
    _write_random(
        src / "big.bin", size
    )  # a new version of the same file: a delta against the old one

    def temp_held() -> int:
        for p in dst.iterdir():
            if p.name.startswith(".relaysync.big.bin."):
                try:
                    return p.stat().st_size
                except FileNotFoundError:
                    return 0
        return 0

    wait_until(
        lambda: temp_held() > 24 * CHUNK_BYTES,
        timeout_s=60,
        interval_s=0.005,
        what="24 MiB patched",
    )
    held = temp_held()
    cluster.agents["t1"].process.kill()
    deltas = list((cluster.agents["src"].data_dir).rglob("delta/*.delta"))
    assert deltas, "the source computed no delta: the update went whole"
    cluster.start_agent("t1")
    limited_fleet.wait_converged(src, [dst], timeout_s=60)
    update = wait_until(
        lambda: (a := newest_advance())["id"] > first["id"] and a,
        timeout_s=30,
        what="the update reported",
    )
    sent_again = update["wire_bytes"]
    assert sent_again <= (size - held) + CHUNK_BYTES, (
        f"the target held {held} of {size} bytes at the kill; {sent_again} bytes were sent to it again"
    )
    assert _partials(dst) == []


@pytest.mark.serial
def test_bandwidth_limit_holds_within_ten_percent(limited_fleet: Fleet) -> None:
    _, src, (dst,) = limited_fleet.new_mapping(targets=("t1",))
    size = 120 * CHUNK_BYTES  # about 5 s at the limit
    _write_random(src / "big.bin", size)
    samples: list[tuple[float, int]] = []

    def done() -> bool:
        parts = _partials(dst)
        if parts:
            try:
                samples.append((time.monotonic(), parts[0].stat().st_size))
            except FileNotFoundError:
                pass
        return (dst / "big.bin").exists()

    wait_until(done, timeout_s=60, interval_s=0.02, what="the file")
    lo = next(s for s in samples if s[1] >= size * 0.2)
    hi = next(s for s in samples if s[1] >= size * 0.8)
    rate_mbit = (hi[1] - lo[1]) * 8 / (hi[0] - lo[0]) / 1e6
    assert LIMIT_MBIT * 0.9 <= rate_mbit <= LIMIT_MBIT * 1.1, rate_mbit
