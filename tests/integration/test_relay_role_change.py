"""A relay whose tree holds more than its watermark says, with real agent processes.

a1 commits files in a session from the source whose checkpoint never comes: the route changes
while the same batch's large file is still on its way, so a1's watermark stays below them. The
new route makes a1 the relay of a2 (at the same watermark), and a1's new parent b1 compares with
it: nothing to send, and a checkpoint that closes past a1's watermark. a2 must get those files
from a1 by a comparison of its own at once, and never acknowledge their seqs without them; the
periodic comparison (PERIODIC_COMPARE_S, 600 s) must not be what repairs it. Found by a stress
run of test_relay_routes.py, fixed in transfer/spool.py (`Spool.append`).

How the state is forced, without a hook: a1 is stopped while the source journals 0-slow.bin,
1-f.txt, 2-dir and 3-big.bin, so that when it comes back they reach it in one batch with one
checkpoint at its end. The MakeDir commits the files staged before it; a bandwidth limit then
holds a1 on 3-big.bin for a minute, which the source deletes meanwhile, so b1 and a1 end with the
same tree. a2 is held on 0-slow.bin the whole time by a lower limit (a slow hop is no failure: the
master plans nothing around it), so it has nothing but what came before, as a1's watermark says.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path

import pytest

from relaysync.constants import PERIODIC_COMPARE_S
from relaysync.testing.cluster import wait_until
from tests._trees import TEMP_PREFIX, snapshot
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet

pytestmark = pytest.mark.integration

OWN_FLEET_AGENTS = ("src", "a1", "a2", "b1")
TARGETS = ("a1", "a2", "b1")
STAR = [["src", "a1"], ["src", "a2"], ["src", "b1"]]
CHAIN = [["src", "b1"], ["b1", "a1"], ["a1", "a2"]]
CATCH_UP_TIMEOUT_S = 60.0  # well under the periodic comparison, which would repair it too
SLOW, FILE, DIR, BIG = "0-slow.bin", "1-f.txt", "2-dir", "3-big.bin"
SLOW_BYTES = 2 * 1024 * 1024  # under RESUME_MIN_BYTES: a2 keeps no partial of it
BIG_BYTES = 32 * 1024 * 1024
A1_MBIT = 4.0  # 0-slow.bin takes a1 about 4 s, 3-big.bin over a minute
A2_MBIT = 0.05  # 0-slow.bin takes a2 about 6 minutes

assert CATCH_UP_TIMEOUT_S < PERIODIC_COMPARE_S / 5


def _put(fleet: Fleet, url: str, body: dict[str, object]) -> None:
    r = fleet.cluster.api.put(url, json=body)
    assert r.status_code in (200, 201), r.text


def _limit(fleet: Fleet, target: str, mbit: float) -> None:
    body = {"scope": "pair", "source": "src", "target": target, "bandwidth_limit_mbit": mbit}
    _put(fleet, "/api/policies", body)


def _latest_route(fleet: Fleet, mapping_id: int, target: str) -> str:
    params = {"mapping": str(mapping_id), "target": target, "limit": 1}
    rows = fleet.cluster.api.get("/api/advances", params=params).json()
    return str(rows[0]["route"]) if rows else ""


def _watermark(fleet: Fleet, name: str, mapping_id: int) -> int:
    """The watermark a target saved (and acknowledges), read from its manifest's meta table."""
    db = fleet.cluster.agents[name].data_dir / "targets" / str(mapping_id) / "manifest.db"
    with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as conn:
        rows = conn.execute("SELECT value FROM meta WHERE key LIKE 'watermark:%'").fetchall()
    return max((int(value) for (value,) in rows), default=0)


def _seq_of(fleet: Fleet, mapping_id: int, path: str) -> int:
    """The seq the source journaled `path` under, from the job log (b1 reported it)."""

    def found() -> int:
        rows = fleet.cluster.api.get(
            "/api/jobs", params={"mapping": str(mapping_id), "limit": 1000}
        ).json()
        return next((int(r["seq"]) for r in rows if r["path"] == path), 0)

    return int(wait_until(found, timeout_s=CONVERGE_TIMEOUT_S, what=f"{path} in the job log"))


def _star(fleet: Fleet) -> tuple[int, Path, list[Path]]:
    """The mapping on a manual star, the hop limits in force, and a first file everywhere."""
    mapping, src, dsts = fleet.new_mapping(targets=TARGETS)
    mapping_id = int(mapping["id"])
    _limit(fleet, "a1", A1_MBIT)
    _limit(fleet, "a2", A2_MBIT)
    _put(fleet, f"/api/mappings/{mapping_id}/routing", {"mode": "manual", "hops": STAR})
    # The star reaches the agents a moment after the API took it: write until every target
    # reports a change that came straight from the source.
    for i in range(200):
        (src / "warm.txt").write_text(f"warm {i}")
        fleet.wait_converged(src, dsts)
        if all(_latest_route(fleet, mapping_id, t) == f"src>{t}" for t in TARGETS):
            break
    else:
        pytest.fail("the manual star was never followed")
    return mapping_id, src, dsts


def _journal_while_a1_is_down(fleet: Fleet, src: Path, b1: Path) -> None:
    """Each change on b1 before the next: journaled in this order, all before a1 is back."""
    fleet.cluster.agents["a1"].process.stop()
    writes = {
        SLOW: lambda: (src / SLOW).write_bytes(os.urandom(SLOW_BYTES)),
        FILE: lambda: (src / FILE).write_text("committed without its checkpoint\n"),
        DIR: lambda: (src / DIR).mkdir(),  # a MakeDir commits the files staged before it
        BIG: lambda: (src / BIG).write_bytes(os.urandom(BIG_BYTES)),
    }
    for name, write in writes.items():
        write()
        wait_until((b1 / name).exists, timeout_s=CONVERGE_TIMEOUT_S, what=f"{name} on b1")


def _a1_committed_without_checkpoint(fleet: Fleet, src: Path, a1: Path, b1: Path) -> None:
    """a1 back: it commits 0-slow.bin and 1-f.txt at the MakeDir, then is held on 3-big.bin."""
    fleet.cluster.start_agent("a1")
    wait_until(
        lambda: (a1 / FILE).exists() and any(n.startswith(TEMP_PREFIX) for n in os.listdir(a1)),
        timeout_s=CONVERGE_TIMEOUT_S,
        interval_s=0.05,
        what="a1 holding 1-f.txt while 3-big.bin is on its way",
    )
    (src / BIG).unlink()  # b1 loses it too: its comparison with a1 will find nothing to send
    fleet.wait_converged(src, [b1])


def _wait_caught_up(fleet: Fleet, mapping_id: int, src: Path, a2: Path, seq: int) -> None:
    """Until a2 equals the source; a2 acknowledging `seq` (1-f.txt) without the file is a failure."""
    want = snapshot(src)
    acked_without: list[int] = []

    def caught_up() -> bool:
        acked = _watermark(fleet, "a2", mapping_id)  # read first: a file commits before its ack
        if acked >= seq and not (a2 / FILE).exists():
            acked_without.append(acked)
            return True
        return snapshot(a2) == want

    try:
        wait_until(
            caught_up, timeout_s=CATCH_UP_TIMEOUT_S, interval_s=0.05, what="a2 caught up by a1"
        )
        assert not acked_without, (
            f"a2 acknowledged seq {acked_without[0]} without {FILE} (seq {seq})"
        )
    except Exception:
        for name in ("a1", "a2"):
            print(f"--- log of {name}\n{fleet.cluster.agents[name].process.log_tail(40)}")
        raise


def test_a_relay_catches_up_a_child_behind_what_its_tree_holds(own_fleet: Fleet) -> None:
    fleet = own_fleet
    mapping_id, src, (a1, a2, b1) = _star(fleet)
    _journal_while_a1_is_down(fleet, src, b1)
    _a1_committed_without_checkpoint(fleet, src, a1, b1)
    seq = _seq_of(fleet, mapping_id, FILE)
    # The defect's state: a1 holds 1-f.txt above its watermark, a2 at that watermark lacks it.
    assert _watermark(fleet, "a1", mapping_id) < seq
    assert not (a2 / FILE).exists() and not (a2 / SLOW).exists()
    assert _watermark(fleet, "a2", mapping_id) >= _watermark(fleet, "a1", mapping_id)
    _put(fleet, f"/api/mappings/{mapping_id}/routing", {"mode": "manual", "hops": CHAIN})
    _wait_caught_up(fleet, mapping_id, src, a2, seq)
    wait_until(
        lambda: _latest_route(fleet, mapping_id, "a2") == "src>b1>a1>a2",
        timeout_s=CONVERGE_TIMEOUT_S,
        what="a2 served along src>b1>a1>a2",
    )
    fleet.wait_converged(src, [a1, a2, b1])
