"""The mass-delete guard: an unmounted (replaced) source folder never wipes the targets."""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from relaysync.agent._delete_runs import GUARD_MIN_DELETES
from relaysync.testing.cluster import wait_until
from tests._tmpfs import mount_tmpfs, remount_copy, umount, unmounted_at_exit
from tests._trees import snapshot
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet, start_fleet

pytestmark = pytest.mark.integration


# own_fleet (conftest.py): a fleet for each test that restarts a process; the others share the
# module's `fleet`
OWN_FLEET_AGENTS = ("src", "t1")


def _events(fleet: Fleet) -> list[dict]:
    """Every event in the master's ring, oldest first (read 1,000 at a time: the fleet is the
    module's, and its earlier tests' events come first)."""
    rows: list[dict] = []
    while True:
        since = rows[-1]["id"] if rows else 0
        page = fleet.cluster.api.get("/api/events", params={"since": since, "limit": 1000}).json()
        rows += page
        if len(page) < 1000:
            return rows


def _held_events(fleet: Fleet, mapping: dict) -> list[dict]:
    """The mapping's hold alarms (other mappings of the fleet raise theirs)."""
    return [
        e
        for e in _events(fleet)
        if e["type"] == "mass_delete_held" and e["data"]["mapping_id"] == mapping["id"]
    ]


def _hold_events(fleet: Fleet, mapping: dict) -> list[tuple[str, str]]:
    """The mapping's hold events in the master's ring, in order: (type, server or reason)."""
    events = _events(fleet)
    return [
        (e["type"], e["data"].get("reason", e["data"]["server"]))
        for e in events
        if e["type"] in ("mass_delete_held", "mass_delete_ended")
        and e["data"]["mapping_id"] == mapping["id"]
    ]


@dataclass
class Held:
    """A mapping src → t1 whose source folder was replaced by an empty one, its deletes held."""

    mapping: dict
    src: Path
    dst: Path
    away: Path  # where the source folder went
    before: dict[str, tuple[object, ...]]  # snapshot() of the target before that


def _held(fleet: Fleet, *, dirs: int) -> Held:
    """Replicate 240 files in `dirs` folders (200 files, flat, for 0), then replace the source
    folder by an empty one (an unmount, simulated) and wait for the hold's alarm."""
    mapping, src, (dst,) = fleet.new_mapping(targets=("t1",))
    for d in range(dirs):
        (src / f"d{d}").mkdir()
        for i in range(240 // dirs):
            (src / f"d{d}" / f"{i}.txt").write_bytes(os.urandom(100))
    for i in range(0 if dirs else 200):
        (src / f"{i}.txt").write_bytes(os.urandom(100))
    fleet.wait_converged(src, [dst])
    before = snapshot(dst)
    away = src.with_name("source.unmounted")
    src.rename(away)
    src.mkdir()
    wait_until(lambda: _hold_events(fleet, mapping), timeout_s=30, what="the mass-delete alarm")
    return Held(mapping, src, dst, away, before)


def test_replaced_source_folder_holds_deletes_until_confirmed(fleet: Fleet) -> None:
    held = _held(fleet, dirs=4)
    mapping, src, dst = held.mapping, held.src, held.dst
    assert snapshot(dst) == held.before  # the targets were not wiped
    # the operator confirms: now the deletes go out
    r = fleet.cluster.api.post(f"/api/mappings/{mapping['id']}/confirm-deletes")
    assert r.status_code == 200, r.text
    fleet.wait_converged(src, [dst])
    assert list(dst.iterdir()) == []


def test_a_hold_is_shown_after_a_master_restart_and_ends_when_the_folder_is_back(
    own_fleet: Fleet,
) -> None:
    """Found in review: a hold that ended by itself (the folder back, nobody confirmed) left
    its `mass_delete_held` event as the last word, so the console showed it held for ever; and
    a master that restarted showed no hold at all while the agent still held it. Now the agent
    tells its hold again when its control link comes up, and reports the hold's end."""
    held = _held(own_fleet, dirs=4)
    mapping, src, dst, away = held.mapping, held.src, held.dst, held.away
    cluster = own_fleet.cluster
    assert cluster.master is not None
    cluster.master.stop()
    cluster.start_master()
    cluster.wait_agent_up("src")
    wait_until(
        lambda: _hold_events(own_fleet, mapping) == [("mass_delete_held", "src")],
        timeout_s=CONVERGE_TIMEOUT_S,
        what="the hold shown again by the restarted master",
    )
    src.rmdir()
    away.rename(src)  # the folder is back: the guard's recheck ends the hold
    wait_until(
        lambda: (
            _hold_events(own_fleet, mapping)
            == [("mass_delete_held", "src"), ("mass_delete_ended", "paths back")]
        ),
        timeout_s=CONVERGE_TIMEOUT_S,
        what="the end of the hold",
    )
    assert snapshot(dst) == held.before  # nothing was deleted


def test_a_hold_ends_when_its_mapping_is_disabled(fleet: Fleet) -> None:
    """The source stops the mapping (disabled: no longer its to source): its hold is over,
    and the master is told so (the console drops the row)."""
    held = _held(fleet, dirs=0)
    mapping, dst = held.mapping, held.dst
    r = fleet.cluster.api.patch(f"/api/mappings/{mapping['id']}", json={"enabled": False})
    assert r.status_code == 200, r.text
    wait_until(
        lambda: (
            _hold_events(fleet, mapping)
            == [("mass_delete_held", "src"), ("mass_delete_ended", "mapping removed")]
        ),
        timeout_s=CONVERGE_TIMEOUT_S,
        what="the end of the hold",
    )
    assert len(list(dst.iterdir())) == 200  # nothing was deleted


def test_a_hold_ends_when_its_agent_restarts_with_the_folder_back(own_fleet: Fleet) -> None:
    """Found in review: an agent stopped while holding (the holds are in its memory) and
    started again with its folder back (a reboot remounted the disk) raised no hold and told
    nothing, so the master's last word for the mapping stayed `mass_delete_held`: the console
    showed it held for ever. Now the source's first full scan, finding nothing to hold, says
    the hold is over ("source restarted")."""
    held = _held(own_fleet, dirs=0)
    mapping, src, dst, away = held.mapping, held.src, held.dst, held.away
    cluster = own_fleet.cluster
    cluster.agents["src"].process.stop()
    src.rmdir()
    away.rename(src)  # remounted while the agent was down (a reboot)
    cluster.start_agent("src")
    wait_until(
        lambda: (
            _hold_events(own_fleet, mapping)
            == [("mass_delete_held", "src"), ("mass_delete_ended", "source restarted")]
        ),
        timeout_s=CONVERGE_TIMEOUT_S,
        what="the end of the hold",
    )
    (src / "marker.txt").write_text("x")  # the source is live again
    own_fleet.wait_converged(src, [dst])  # (a file still in its temp name was counted once)
    assert len(list(dst.iterdir())) == 201  # nothing was deleted


def test_small_deletes_pass_the_guard(fleet: Fleet) -> None:
    _, src, (dst,) = fleet.new_mapping(targets=("t1",))
    for i in range(300):
        (src / f"{i}.txt").write_text(str(i))
    fleet.wait_converged(src, [dst])
    for i in range(50):
        (src / f"{i}.txt").unlink()
    shutil.rmtree(src / "missing", ignore_errors=True)
    fleet.wait_converged(src, [dst])


def test_replaced_flat_source_folder_holds_its_file_deletes(fleet: Fleet) -> None:
    """Found in review: deleted plain files counted for nothing, so a flat folder that vanished
    (200 files, no directory) was wiped on the targets without an alarm."""
    held = _held(fleet, dirs=0)
    alarms = _held_events(fleet, held.mapping)
    assert [(e["data"]["deletes"], e["data"]["entries"]) for e in alarms] == [(200, 200)]
    assert snapshot(held.dst) == held.before


def test_an_unmounted_source_disk_holds_its_deletes_and_replicates_again_once_back(
    fleet: Fleet,
) -> None:
    """Found in review: after `umount` of the source's disk (a real tmpfs) nothing happened, no
    rescan and no alarm, and after mounting it again a new file never replicated: every watch
    had been dropped silently. 42 entries, too few for the fraction rule: held as a missing
    folder."""
    base = fleet.base / "unmounted"
    base.mkdir()
    src, dst, staging, backup = (base / n for n in ("source", "target", "staging", "backup"))
    with unmounted_at_exit(src, staging):
        mount_tmpfs(src)
        for d in range(2):
            (src / f"d{d}").mkdir()
            for i in range(20):
                (src / f"d{d}" / f"{i}.txt").write_bytes(os.urandom(100))
        shutil.copytree(src, backup)
        mapping = fleet.cluster.create_mapping("unmounted", "src", src, [("t1", dst)])
        wait_until(dst.is_dir, timeout_s=CONVERGE_TIMEOUT_S, what="target opened")
        fleet.wait_converged(src, [dst])
        before = snapshot(dst)
        umount(src)
        held = wait_until(lambda: _held_events(fleet, mapping), timeout_s=30, what="the alarm")
        assert [(e["data"]["deletes"], e["data"]["root_missing"]) for e in held] == [(42, True)]
        assert snapshot(dst) == before  # the targets were not wiped
        remount_copy(backup, src, staging)
        (src / "d0" / "new.txt").write_text("written after the remount")
        fleet.wait_converged(src, [dst])
        assert snapshot(dst, with_mtime=False) == snapshot(backup, with_mtime=False) | {
            "d0/new.txt": snapshot(src, with_mtime=False)["d0/new.txt"]
        }


# --- An `rm -rf` slower than the guard's window ---

SCALED_WINDOW_S = 2.0  # GUARD_WINDOW_S (10 s in production), scaled down in this test's agents


def _scaled_guard_env(tmp_path: Path) -> dict[str, str]:
    """PYTHONPATH with a sitecustomize that scales the guard's window down in every process."""
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import relaysync.agent._delete_runs as g\n"
        f"g.GUARD_WINDOW_S = {SCALED_WINDOW_S}\n"
        "g.GUARD_SETTLE_S = 0.2\n"
        "g.GUARD_RUN_JUDGE_S = 120.0\n"  # the rm below takes far less: judged as one run
    )
    return {
        "PYTHONPATH": os.pathsep.join(p for p in (str(site), os.environ.get("PYTHONPATH", "")) if p)
    }


def test_an_rm_rf_slower_than_the_window_is_held_and_goes_once_confirmed(tmp_path: Path) -> None:
    """Found under load: an `rm -rf` slower than the guard's window went out a window at a time
    (6,184 of 16,008 deletes sent before the hold). Real master and agents, the window scaled
    to 2 s: 10 directories of 150 files removed one every 0.6 s (over three windows). The
    target loses fewer than GUARD_MIN_DELETES entries, a file written meanwhile still reaches
    it (the hold keeps only deletes), and the confirmation lets the rest go."""
    fleet = start_fleet(tmp_path, agents=("src", "t1"), extra_env=_scaled_guard_env(tmp_path))
    try:
        mapping, src, (dst,) = fleet.new_mapping(targets=("t1",))
        for d in range(10):
            (src / f"d{d}").mkdir()
            for i in range(150):
                (src / f"d{d}" / f"{i}.txt").write_bytes(os.urandom(64))
        fleet.wait_converged(src, [dst], timeout_s=60)
        entries = len(snapshot(dst))
        for d in range(10):
            shutil.rmtree(src / f"d{d}")
            time.sleep(0.6)  # the slow rm's pace (what is tested), not a wait for the fleet
        wait_until(lambda: _held_events(fleet, mapping), timeout_s=60, what="the mass-delete alarm")
        (src / "marker.txt").write_text("written while the deletes are held")
        # journaled after every delete that went: once it is there, they are there too
        wait_until((dst / "marker.txt").exists, timeout_s=CONVERGE_TIMEOUT_S, what="the write")
        lost = entries - (len(snapshot(dst)) - 1)
        assert lost < GUARD_MIN_DELETES, f"{lost} entries deleted on the target before the hold"
        r = fleet.cluster.api.post(f"/api/mappings/{mapping['id']}/confirm-deletes")
        assert r.status_code == 200, r.text
        fleet.wait_converged(src, [dst], timeout_s=60)
        assert [p.name for p in dst.iterdir()] == ["marker.txt"]
        assert len(_held_events(fleet, mapping)) == 1
    finally:
        fleet.cluster.stop()
