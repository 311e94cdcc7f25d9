"""The mass-delete guard: an unmounted (replaced) source folder never wipes the targets."""

from __future__ import annotations

import os
import shutil

import pytest

from relaysync.testing.cluster import wait_until
from tests._tmpfs import mount_tmpfs, remount_copy, umount, unmounted_at_exit
from tests._trees import snapshot
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet

pytestmark = pytest.mark.integration


OWN_FLEET_AGENTS = ("src", "t1")  # own_fleet (conftest.py): a fleet for each test


def _held_events(fleet: Fleet) -> list[dict]:
    events = fleet.cluster.api.get("/api/events", params={"since": 0, "limit": 1000}).json()
    rows = events["events"] if isinstance(events, dict) else events
    return [e for e in rows if e["type"] == "mass_delete_held"]


def test_replaced_source_folder_holds_deletes_until_confirmed(own_fleet: Fleet) -> None:
    mapping, src, (dst,) = own_fleet.new_mapping(targets=("t1",))
    for d in range(4):
        (src / f"d{d}").mkdir()
        for i in range(60):
            (src / f"d{d}" / f"{i}.txt").write_bytes(os.urandom(100))
    own_fleet.wait_converged(src, [dst])
    before = snapshot(dst)
    # an unmount, simulated: the folder is replaced by an empty one
    src.rename(src.with_name("source.unmounted"))
    src.mkdir()
    wait_until(lambda: _held_events(own_fleet), timeout_s=30, what="the mass-delete alarm")
    assert snapshot(dst) == before  # the targets were not wiped
    # the operator confirms: now the deletes go out
    r = own_fleet.cluster.api.post(f"/api/mappings/{mapping['id']}/confirm-deletes")
    assert r.status_code == 200, r.text
    own_fleet.wait_converged(src, [dst])
    assert list(dst.iterdir()) == []


def test_small_deletes_pass_the_guard(own_fleet: Fleet) -> None:
    _, src, (dst,) = own_fleet.new_mapping(targets=("t1",))
    for i in range(300):
        (src / f"{i}.txt").write_text(str(i))
    own_fleet.wait_converged(src, [dst])
    for i in range(50):
        (src / f"{i}.txt").unlink()
    shutil.rmtree(src / "missing", ignore_errors=True)
    own_fleet.wait_converged(src, [dst])


def test_replaced_flat_source_folder_holds_its_file_deletes(own_fleet: Fleet) -> None:
    """Found in review: deleted plain files counted for nothing, so a flat folder that vanished
    (200 files, no directory) was wiped on the targets without an alarm."""
    _, src, (dst,) = own_fleet.new_mapping(targets=("t1",))
    for i in range(200):
        (src / f"{i}.txt").write_bytes(os.urandom(100))
    own_fleet.wait_converged(src, [dst])
    before = snapshot(dst)
    src.rename(src.with_name("source.unmounted"))
    src.mkdir()
    held = wait_until(lambda: _held_events(own_fleet), timeout_s=30, what="the mass-delete alarm")
    assert [(e["data"]["deletes"], e["data"]["entries"]) for e in held] == [(200, 200)]
    assert snapshot(dst) == before


def test_an_unmounted_source_disk_holds_its_deletes_and_replicates_again_once_back(
    own_fleet: Fleet,
) -> None:
    """Found in review: after `umount` of the source's disk (a real tmpfs) nothing happened, no
    rescan and no alarm, and after mounting it again a new file never replicated: every watch
    had been dropped silently. 42 entries, too few for the fraction rule: held as a missing
    folder."""
    base = own_fleet.base / "unmounted"
    base.mkdir()
    src, dst, staging, backup = (base / n for n in ("source", "target", "staging", "backup"))
    with unmounted_at_exit(src, staging):
        mount_tmpfs(src)
        for d in range(2):
            (src / f"d{d}").mkdir()
            for i in range(20):
                (src / f"d{d}" / f"{i}.txt").write_bytes(os.urandom(100))
        shutil.copytree(src, backup)
        own_fleet.cluster.create_mapping("unmounted", "src", src, [("t1", dst)])
        wait_until(dst.is_dir, timeout_s=CONVERGE_TIMEOUT_S, what="target opened")
        own_fleet.wait_converged(src, [dst])
        before = snapshot(dst)
        umount(src)
        held = wait_until(lambda: _held_events(own_fleet), timeout_s=30, what="the alarm")
        assert [(e["data"]["deletes"], e["data"]["root_missing"]) for e in held] == [(42, True)]
        assert snapshot(dst) == before  # the targets were not wiped
        remount_copy(backup, src, staging)
        (src / "d0" / "new.txt").write_text("written after the remount")
        own_fleet.wait_converged(src, [dst])
        assert snapshot(dst, with_mtime=False) == snapshot(backup, with_mtime=False) | {
            "d0/new.txt": snapshot(src, with_mtime=False)["d0/new.txt"]
        }
