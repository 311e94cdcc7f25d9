"""Link policies take effect on the wire: compression seen in the kernel's byte counts, and the dump-copy switch."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from relaysync.testing.cluster import wait_until
from tests.integration.conftest import Fleet, start_fleet

pytestmark = pytest.mark.integration


@pytest.fixture
def own_fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = start_fleet(tmp_path, agents=("src", "t1"))
    try:
        yield f
    finally:
        f.cluster.stop()


def _bytes_to(port: int) -> int:
    """TCP payload bytes sent so far on every established connection to 127.0.0.1:port (TLS included)."""
    out = subprocess.run(["ss", "-tinH", "state", "established", f"( dport = :{port} )"],
                         capture_output=True, text=True, check=True).stdout
    return sum(int(n) for n in re.findall(r"bytes_sent:(\d+)", out))


def _write_text(path: Path, mib: int) -> None:
    line = b"relaysync compresses repetitive text like this line, over and over again.\n"
    path.write_bytes(line * (mib * 1024 * 1024 // len(line)))


def _sent_for(fleet: Fleet, src: Path, dst: Path, name: str) -> int:
    port = int(fleet.cluster.api.get("/api/servers/t1").json()["address"].rsplit(":", 1)[1])
    before = _bytes_to(port)
    _write_text(src / name, 8)
    fleet.wait_converged(src, [dst])
    return _bytes_to(port) - before


def test_zstd_policy_compresses_on_the_wire(own_fleet: Fleet) -> None:
    _, src, (dst,) = own_fleet.new_mapping(targets=("t1",))
    (src / "warm").write_text("x")
    own_fleet.wait_converged(src, [dst])
    plain = _sent_for(own_fleet, src, dst, "a.txt")
    assert plain > 8 * 1024 * 1024  # same group, default policy: no compression
    r = own_fleet.cluster.api.put("/api/policies", json={"scope": "same_group", "zstd_level": 3})
    assert r.status_code == 200, r.text
    wait_until(lambda: "running assignment" in (own_fleet.cluster.base / "agent-src.log").read_text(),
               timeout_s=10, what="new assignment")
    (src / "probe").write_text("after the policy")
    own_fleet.wait_converged(src, [dst])
    packed = _sent_for(own_fleet, src, dst, "b.txt")
    assert packed < plain / 20, (packed, plain)


def test_policy_refused_with_a_clear_error(own_fleet: Fleet) -> None:
    r = own_fleet.cluster.api.put("/api/policies", json={"scope": "pair", "zstd_level": 3})
    assert r.status_code == 422
    assert "pair policy names a source and a target" in r.text
