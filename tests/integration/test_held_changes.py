"""What a held mapping (manual or reserved transmission) sends when it is released, with real
agents and the real clock, on one fleet for the module: no test here stops a process. (Across
restarts and stops: test_modes.py.)"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from relaysync.testing.cluster import wait_until
from tests.integration._modes import hold, journaled_ops, send_argv, set_mode, wait_mode
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet, bytes_sent_to

pytestmark = pytest.mark.integration


def test_reserved_every_interval_sends_on_schedule(fleet: Fleet) -> None:
    mapping, src, (dst,) = fleet.new_mapping(targets=("t1",))
    set_mode(fleet, mapping["id"], mode="reserved", schedule="every:2")
    wait_mode(fleet, mapping, "reserved")
    (src / "periodic.txt").write_text("sent by the schedule")
    fleet.wait_converged(src, [dst])
    info = fleet.cluster.api.get(f"/api/mappings/{mapping['id']}/mode").json()
    assert info["release"] >= 1 and info["last_run_at"] is not None


def test_bad_schedule_is_refused(fleet: Fleet) -> None:
    mapping, _, _ = fleet.new_mapping(targets=("t1",))
    for body in (
        {"mode": "reserved", "schedule": "sometimes"},
        {"mode": "reserved"},
        {"mode": "reserved", "schedule": "cron:not a cron"},
        {"mode": "manual", "schedule": "every:5"},
    ):
        r = fleet.cluster.api.put(f"/api/mappings/{mapping['id']}/mode", json=body)
        assert r.status_code == 422, (body, r.text)


def test_send_command_waits_until_every_target_has_the_release(fleet: Fleet) -> None:

    mapping, src, (dst,) = fleet.new_mapping(targets=("t1",))
    journal = hold(fleet, mapping)
    for i in range(20):
        (src / f"batch-{i}.txt").write_text(f"file {i}")
    # the send covers what the source journaled before it: all 20, once the watcher saw them
    wait_until(
        lambda: {("write", f"batch-{i}.txt") for i in range(20)} <= set(journaled_ops(journal)),
        timeout_s=CONVERGE_TIMEOUT_S,
        what="the 20 files journaled",
    )
    done = subprocess.run(
        send_argv(fleet, mapping["id"], "--json", "--timeout", "60"),
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["release"] == 1 and result["upto_seq"] >= 20
    fleet.wait_converged(src, [dst])


def test_a_large_file_saved_three_times_while_held_goes_once_as_a_small_delta(
    fleet: Fleet,
) -> None:
    """Three appends to an 8 MiB file while the mapping is manual: three journal records. On
    release the first would already carry the newest version; the next two name bases never
    sent (nor signed), so each went whole again (16 MiB for 21 bytes). Coalesced, one delta goes."""
    mapping, src, (dst,) = fleet.new_mapping(targets=("t1",))
    (src / "big.log").write_bytes(os.urandom(8 * 1024 * 1024))
    fleet.wait_converged(src, [dst])
    signatures = (
        fleet.cluster.agents["src"].data_dir / "sources" / str(mapping["id"]) / "signatures" / "sig"
    )
    wait_until(
        lambda: any(signatures.glob("*.sig")), timeout_s=30, what="the first version's signature"
    )
    journal = hold(fleet, mapping)

    def journaled() -> int:
        return sum(p.stat().st_size for p in journal.glob("*.seg"))

    for i in range(3):  # three saves, each its own journal record
        before = journaled()
        with open(src / "big.log", "ab") as f:
            f.write(f"line {i}\n".encode())
        wait_until(lambda: journaled() > before, timeout_s=30, what=f"save {i} journaled")  # noqa: B023
    port = fleet.peer_port("t1")
    sent = bytes_sent_to(port)
    r = fleet.cluster.api.post(f"/api/mappings/{mapping['id']}/send")
    assert r.status_code == 200, r.text
    fleet.wait_converged(src, [dst])
    assert bytes_sent_to(port) - sent < 1024 * 1024


def _rename_and_send(
    fleet: Fleet, mapping: dict, journal: Path, written: list[str], old: str, new: str
) -> None:
    """Once the held mapping's source journaled the writes of `written`, rename `old` to `new`
    in its folder; once it journaled the rename, release the mapping (POST send)."""
    src = Path(mapping["source_path"])
    wait_until(
        lambda: {("write", f) for f in written} <= set(journaled_ops(journal)),
        timeout_s=30,
        what=f"the writes of {written} journaled",
    )
    (src / old).rename(src / new)
    wait_until(
        lambda: ("rename", old) in journaled_ops(journal),
        timeout_s=30,
        what=f"the rename of {old} journaled",
    )
    r = fleet.cluster.api.post(f"/api/mappings/{mapping['id']}/send")
    assert r.status_code == 200, r.text


def test_a_directory_built_then_renamed_while_held_arrives_with_its_files(fleet: Fleet) -> None:
    """A deploy builds `release.tmp/` and renames it into place while the mapping is held: when
    the link sends the writes, their files are gone (moved), and the rename alone would move an
    empty directory on the target, which would stay empty until the next release."""
    mapping, src, (dst,) = fleet.new_mapping(targets=("t1",))
    (src / "before").write_text("realtime")
    fleet.wait_converged(src, [dst])
    journal = hold(fleet, mapping)
    (src / "release.tmp" / "static").mkdir(parents=True)
    files = [f"release.tmp/page-{i}.html" for i in range(3)] + ["release.tmp/static/app.js"]
    for name in files[:3]:
        (src / name).write_text(name)
    (src / files[3]).write_bytes(os.urandom(300_000))  # streamed, not a small file
    _rename_and_send(fleet, mapping, journal, files, "release.tmp", "release-42")
    fleet.wait_converged(src, [dst])


def test_files_still_hot_when_their_directory_is_renamed_are_journaled_where_they_went(
    fleet: Fleet, tmp_path: Path
) -> None:
    """A tree moved into the folder is found by a scan, its just-written files held until they
    cool (HOT_FILE_S); renamed meanwhile, they must be re-checked at their new place, or they
    were never journaled at all (no comparison could bring them: the source's manifest lacked them)."""
    _, src, (dst,) = fleet.new_mapping(targets=("t1",))
    built = tmp_path / "outside" / "release.tmp"
    built.mkdir(parents=True)
    for i in range(3):
        (built / f"page-{i}.html").write_text(f"page {i}")
    built.rename(src / "release.tmp")
    # Its directory is journaled (and replicated) while its files are held for being hot. (If
    # this took longer than HOT_FILE_S, they would have cooled and gone unheld: no failure.)
    wait_until(
        lambda: (dst / "release.tmp").is_dir(),
        timeout_s=CONVERGE_TIMEOUT_S,
        interval_s=0.005,
        what="the moved-in directory on t1",
    )
    (src / "release.tmp").rename(src / "release-43")
    fleet.wait_converged(src, [dst])


def test_a_file_changed_then_renamed_while_held_leaves_no_old_name(fleet: Fleet) -> None:
    """The rename's own file never got its new version to the target: the result goes whole
    instead of the rename, and the old name must go too (the target holds version 1 there)."""
    mapping, src, (dst,) = fleet.new_mapping(targets=("t1",))
    (src / "a.html").write_text("version 1")
    fleet.wait_converged(src, [dst])
    journal = hold(fleet, mapping)
    (src / "a.html").write_text("version 2")
    _rename_and_send(fleet, mapping, journal, ["a.html"], "a.html", "b.html")
    fleet.wait_converged(src, [dst])


def test_a_log_rotated_while_held_keeps_its_last_lines_under_the_old_name(
    fleet: Fleet,
) -> None:
    """logrotate's create mode while the mapping is held: the write of the log's last lines is
    journaled, then app.log becomes app.log.1 and a new app.log is made. Before the fix the link
    read the new log for that write and the Rename moved it: the target's app.log.1 held the new
    log, for good (a held mapping never compares). /work/notes/s25/send-review.md, defect 1."""
    mapping, src, (dst,) = fleet.new_mapping(targets=("t1",))
    (src / "app.log").write_text("line 1\n")
    fleet.wait_converged(src, [dst])
    journal = hold(fleet, mapping)

    def writes() -> int:
        return journaled_ops(journal).count(("write", "app.log"))

    before = writes()
    with open(src / "app.log", "a") as log:
        log.write("line 2\n")
    wait_until(lambda: writes() > before, timeout_s=30, what="the last lines journaled")
    (src / "app.log").rename(src / "app.log.1")
    (src / "app.log").write_text("first line of the new log\n")
    wait_until(
        lambda: ("rename", "app.log") in journaled_ops(journal) and writes() > before + 1,
        timeout_s=30,
        what="the rotation journaled",
    )
    r = fleet.cluster.api.post(f"/api/mappings/{mapping['id']}/send")
    assert r.status_code == 200, r.text
    fleet.wait_converged(src, [dst])
    assert (dst / "app.log.1").read_text() == "line 1\nline 2\n"
