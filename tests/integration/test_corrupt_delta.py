"""A delta corrupted on its way (a test hook in the sender flips one bit) is caught by the
target's whole-file hash, never committed, and the file is sent again whole."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaysync.testing.cluster import wait_until
from tests.integration.conftest import Fleet, start_fleet

pytestmark = pytest.mark.integration


@pytest.fixture
def corrupting_fleet(tmp_path: Path) -> Iterator[Fleet]:
    fleet = start_fleet(
        tmp_path, agents=("src", "t1"), extra_env={"RELAYSYNC_TEST_CORRUPT_DELTAS": "1"}
    )
    try:
        yield fleet
    finally:
        fleet.cluster.stop()


def test_a_flipped_bit_in_a_delta_is_resent_whole_and_never_committed(
    corrupting_fleet: Fleet,
) -> None:
    fleet = corrupting_fleet
    _, src, (dst,) = fleet.new_mapping(targets=("t1",))
    v1 = bytearray(os.urandom(3 * 1024 * 1024))
    (src / "big.bin").write_bytes(v1)
    fleet.wait_converged(src, [dst])
    sig_dir = next((fleet.cluster.agents["src"].data_dir / "sources").glob("*/signatures/sig"))
    wait_until(
        lambda: any(sig_dir.glob("*.sig")), timeout_s=30, what="the first version's signature"
    )

    v2 = bytearray(v1)
    v2[1_000_000:1_010_000] = os.urandom(10_000)
    (src / "big.bin").write_bytes(v2)

    def target_holds_v2() -> bool:
        data = (dst / "big.bin").read_bytes()  # commits are atomic: always a whole version
        assert data in (v1, v2), "the target committed a version the source never had"
        return data == v2

    wait_until(target_holds_v2, timeout_s=60, what="the update after the corrupt delta")
    assert [p.name for p in dst.iterdir()] == ["big.bin"]  # no temp file left behind
    log = fleet.cluster.agents["src"].process.log_path.read_text(errors="replace")
    assert "HASH_MISMATCH" in log, "the target should have refused the corrupt delta"
    deltas = list(sig_dir.parent.glob("delta/*.delta"))
    assert deltas, "the update should have been tried as a delta first"
