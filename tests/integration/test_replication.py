"""End to end: real master and agent processes, real files, real TLS sockets."""

from __future__ import annotations

import os
import shutil
import threading
import time
from pathlib import Path

import pytest

from tests._trees import snapshot, temp_files
from tests.integration.conftest import Fleet

pytestmark = pytest.mark.integration


def test_initial_sync_of_existing_tree(fleet: Fleet, tmp_path: Path) -> None:
    mapping, src, dsts = fleet.new_mapping()
    fleet.wait_converged(src, dsts)
    (src / "a" / "b").mkdir(parents=True)
    for i in range(50):
        (src / "a" / "b" / f"f{i}.txt").write_text(f"content {i}\n" * i)
    fleet.wait_converged(src, dsts)


def test_every_op_replicates(fleet: Fleet) -> None:
    mapping, src, dsts = fleet.new_mapping()
    # the absolute link below lands only where the operator trusts the source (a target's
    # default refuses it: tests/integration/test_target_policy.py)
    policy = {"symlinks": "any", "mode_mask": 0o002}
    r = fleet.cluster.api.put(f"/api/mappings/{mapping['id']}/target-policy", json=policy)
    assert r.status_code == 200, r.text
    steps = [
        lambda: (src / "new.txt").write_text("hello"),
        lambda: (src / "new.txt").write_text("overwritten, longer content"),
        lambda: (src / "new.txt").open("a").write(" appended"),
        lambda: os.truncate(src / "new.txt", 5),
        lambda: (src / "empty").write_bytes(b""),
        lambda: (src / "new.txt").rename(src / "renamed.txt"),
        lambda: (src / "dir" / "sub").mkdir(parents=True),
        lambda: (src / "dir" / "sub" / "in.bin").write_bytes(os.urandom(300_000)),
        lambda: (src / "dir").rename(src / "dir2"),
        lambda: (src / "other").mkdir(),
        lambda: (src / "dir2" / "sub" / "in.bin").rename(src / "other" / "moved.bin"),
        lambda: (src / "renamed.txt").unlink(),
        lambda: shutil.rmtree(src / "dir2"),
        lambda: os.makedirs(src / "p" / "q" / "r"),
        lambda: (src / "p" / "q" / "r" / "deep.txt").write_text("deep"),
        lambda: (src / "ünïcødé name with spaces.txt").write_text("ü"),
        lambda: os.symlink("other/moved.bin", src / "link"),
        lambda: os.symlink("/etc/passwd", src / "abs-link"),
        lambda: os.chmod(src / "other" / "moved.bin", 0o600),
    ]
    for step in steps:
        step()
        fleet.wait_converged(src, dsts)
    for d in dsts:
        assert os.readlink(d / "abs-link") == "/etc/passwd"  # copied as a link, never followed


def test_mkdir_p_with_files_inside_and_tree_moved_in(fleet: Fleet, tmp_path: Path) -> None:
    _, src, dsts = fleet.new_mapping()
    deep = src / "x" / "y" / "z"
    deep.mkdir(parents=True)
    for i in range(20):
        (deep / f"{i}.txt").write_text(str(i))
    outside = tmp_path / "outside"
    (outside / "inner").mkdir(parents=True)
    (outside / "inner" / "file").write_text("moved in")
    outside.rename(src / "moved-in")
    fleet.wait_converged(src, dsts)


def test_slow_writer_arrives_once_complete(fleet: Fleet) -> None:
    _, src, dsts = fleet.new_mapping()
    chunk = os.urandom(64 * 1024)
    partial_seen = []
    stop = threading.Event()

    def watch_targets() -> None:
        while not stop.is_set():
            for d in dsts:
                p = d / "slow.bin"
                try:
                    size = p.stat().st_size
                except FileNotFoundError:
                    continue
                if size not in (0, len(chunk) * 20):
                    partial_seen.append(size)
            time.sleep(0.005)

    t = threading.Thread(target=watch_targets)
    t.start()
    try:
        with open(src / "slow.bin", "wb") as f:
            for _ in range(20):
                f.write(chunk)
                f.flush()
                time.sleep(0.1)  # a slow writer: the pauses between its writes are the scenario
        fleet.wait_converged(src, dsts)
    finally:
        stop.set()
        t.join()
    assert partial_seen == []
    from relaysync.testing.cluster import wait_until

    def logged() -> list[dict]:
        jobs = fleet.cluster.api.get(
            "/api/jobs", params={"mapping": _mapping_id(fleet, src), "limit": 100}
        ).json()
        writes = [j for j in jobs if j["path"] == "slow.bin"]
        return writes if writes and all(w["committed_targets"] == 2 for w in writes) else []

    writes = wait_until(logged, timeout_s=30, what="job log of slow.bin")
    assert len(writes) == 1, writes


def test_excluded_files_never_appear(fleet: Fleet) -> None:
    _, src, dsts = fleet.new_mapping(exclude=[r"\.tmp$", r"^cache/"], include=[])
    (src / "keep.txt").write_text("keep")
    (src / "drop.tmp").write_text("drop")
    (src / "cache").mkdir()
    (src / "cache" / "x").write_text("x")
    (src / "marker").write_text("last")
    for d in dsts:
        from relaysync.testing.cluster import wait_until

        # a file the mapping's first scan finds still fresh is held a moment: it may come after the marker
        wait_until(
            lambda d=d: (d / "marker").exists() and (d / "keep.txt").exists(),
            timeout_s=30,
            what="marker and keep.txt",
        )
        assert (d / "keep.txt").read_text() == "keep"
        assert not (d / "drop.tmp").exists()
        assert not (d / "cache" / "x").exists()


def test_job_log_records_each_change_once(fleet: Fleet) -> None:
    mapping, src, dsts = fleet.new_mapping()
    for i in range(30):
        (src / f"f{i}").write_text(str(i))
    fleet.wait_converged(src, dsts)
    from relaysync.testing.cluster import wait_until

    def logged() -> list[dict]:
        rows = fleet.cluster.api.get(
            "/api/jobs", params={"mapping": mapping["id"], "limit": 500}
        ).json()
        return rows if len(rows) >= 30 and all(r["committed_targets"] == 2 for r in rows) else []

    rows = wait_until(logged, timeout_s=30, what="job log")
    paths = [r["path"] for r in rows]
    assert len(paths) == len(set(paths)) == 30


def _mapping_id(fleet: Fleet, src: Path) -> int:
    for m in fleet.cluster.api.get("/api/mappings").json():
        if m["source_path"] == str(src):
            return int(m["id"])
    raise AssertionError("mapping not found")


def test_no_temp_files_left(fleet: Fleet) -> None:
    _, src, dsts = fleet.new_mapping()
    for i in range(100):
        (src / f"{i}.dat").write_bytes(os.urandom(1000 + i))
    fleet.wait_converged(src, dsts)
    for d in dsts:
        assert temp_files(d) == []
        assert snapshot(d) == snapshot(src)


def test_burst_of_3000_changes_converges_and_is_logged_once_each(fleet: Fleet) -> None:
    from relaysync.testing.cluster import wait_until

    mapping, src, dsts = fleet.new_mapping()
    for d in range(30):
        (src / f"d{d}").mkdir()
        for i in range(100):
            (src / f"d{d}" / f"{i}.txt").write_bytes(os.urandom(64))
    fleet.wait_converged(src, dsts, timeout_s=60)

    def logged() -> list[dict]:
        rows: list[dict] = []
        before = None
        for _ in range(10):
            params = {"mapping": mapping["id"], "limit": 1000} | (
                {"before": before} if before else {}
            )
            page = fleet.cluster.api.get("/api/jobs", params=params).json()
            if not page:
                break
            rows += page
            before = page[-1]["seq"]
        return rows if len(rows) >= 3030 and all(r["committed_targets"] == 2 for r in rows) else []

    rows = wait_until(logged, timeout_s=60, what="3,030 job log rows")
    by_path: dict[str, list[dict]] = {}
    for r in rows:
        by_path.setdefault(r["path"], []).append(r)
    assert [v for v in by_path.values() if len(v) > 1] == []
    assert len({r["seq"] for r in rows}) == len(rows) == 3030


def test_large_file_updates_converge_through_deltas(fleet: Fleet) -> None:
    _, src, dsts = fleet.new_mapping()
    data = bytearray(os.urandom(3 * 1024 * 1024))
    (src / "big.bin").write_bytes(data)
    fleet.wait_converged(src, dsts)
    for i in range(5):  # each update is sent as a delta against the version the targets hold
        data[i * 500_000 : i * 500_000 + 1000] = os.urandom(1000)
        (src / "big.bin").write_bytes(data)
        fleet.wait_converged(src, dsts)
    sigs = list(
        (fleet.cluster.agents["src"].data_dir / "sources").glob("*/signatures/delta/*.delta")
    )
    assert sigs, "updates should have gone as deltas"


def test_mapping_deleted_mid_stream_leaves_agents_serving(fleet: Fleet) -> None:
    gone, src_a, _ = fleet.new_mapping()
    _, src_b, dsts_b = fleet.new_mapping()
    for i in range(200):
        (src_a / f"a{i}").write_bytes(os.urandom(5000))
    assert fleet.cluster.api.delete(f"/api/mappings/{gone['id']}").status_code == 204
    shutil.rmtree(src_a)
    (src_b / "after.txt").write_text("still replicating")
    fleet.wait_converged(src_b, dsts_b)
    assert all(agent.process.alive() for agent in fleet.cluster.agents.values())


def test_a_source_folder_that_is_a_release_symlink_replicates_and_follows_each_deploy(
    fleet: Fleet,
) -> None:
    """Deploys that switch `current` -> releases/N atomically (Capistrano and the like). Was:
    a source folder given as a symlink had no watch at all, so nothing written after the
    first sync replicated until the next compare (600 s), and a switch to a new release was
    never noticed."""
    base = fleet.base / "deploy"
    first, second = base / "releases" / "1", base / "releases" / "2"
    for release, version in ((first, "v1"), (second, "v2")):
        (release / "assets").mkdir(parents=True)
        (release / "index.html").write_text(version)
        (release / "assets" / f"app-{version}.js").write_text(f"app {version}")
    (first / "only-in-v1.txt").write_text("removed by the deploy")
    current, target = base / "current", base / "t1"
    current.symlink_to(first)
    fleet.cluster.create_mapping("deploy", "src", current, [("t1", target)])
    fleet.wait_converged(current, [target])
    (current / "uploads").mkdir()
    (current / "uploads" / "live.txt").write_text("written in place, in real time")
    fleet.wait_converged(current, [target])
    switch = base / "current.next"
    switch.symlink_to(second)
    switch.rename(current)  # the deploy: one atomic rename over the link
    fleet.wait_converged(current, [target])
    assert (target / "index.html").read_text() == "v2"
    assert not (target / "only-in-v1.txt").exists()
    (current / "index.html").write_text("v2, hot-fixed")
    fleet.wait_converged(current, [target])


def test_files_an_exclude_no_longer_hides_go_when_the_source_has_none(fleet: Fleet) -> None:
    """Found in review: a target's leftovers under an excluded pattern (an old deploy's cache/)
    are left alone while excluded; once the exclude is lifted the target must equal the source,
    but its folder kept the manifest scanned under the old filter, so they stayed until its
    agent restarted. New filters now reopen the folder: they are scanned, and removed."""
    mapping, src, dsts = fleet.new_mapping(exclude=[r"^cache(/|$)", r"\.tmp$"], include=[])
    (src / "a.txt").write_text("a")
    for d in dsts:
        (d / "cache").mkdir(exist_ok=True)
        (d / "cache" / "b.bin").write_text("left over")
        (d / "junk.tmp").write_text("left over")
    for d in dsts:
        from relaysync.testing.cluster import wait_until

        wait_until(lambda d=d: (d / "a.txt").exists(), timeout_s=30, what="a.txt replicated")
        assert (d / "junk.tmp").exists()  # excluded: left alone
    r = fleet.cluster.api.patch(f"/api/mappings/{mapping['id']}", json={"exclude": []})
    assert r.status_code == 200, r.text
    fleet.wait_converged(src, dsts)


def test_a_deleted_mappings_state_is_marked_gone_on_its_agents(fleet: Fleet) -> None:
    """Found in review: a deleted mapping's journal and manifests stayed on its agents for good
    (ids are never reused). Marked gone at the assignment without it, the state is removed a
    week on (agent/state_sweep.py); the target's files stay."""
    from relaysync.agent.state_sweep import GONE_MARK
    from relaysync.testing.cluster import wait_until

    mapping, src, dsts = fleet.new_mapping()
    (src / "kept.txt").write_text("kept")
    fleet.wait_converged(src, dsts)
    agents = fleet.cluster.agents
    states = [agents["src"].data_dir / "sources" / str(mapping["id"])] + [
        agents[t].data_dir / "targets" / str(mapping["id"]) for t in ("t1", "t2")
    ]
    assert all(s.is_dir() and not (s / GONE_MARK).exists() for s in states)
    assert fleet.cluster.api.delete(f"/api/mappings/{mapping['id']}").status_code == 204
    wait_until(
        lambda: all((s / GONE_MARK).exists() for s in states),
        timeout_s=30,
        what="the deleted mapping's state marked gone on its three agents",
    )
    assert all((d / "kept.txt").read_text() == "kept" for d in dsts)
