"""Manual and reserved transmission across restarts and stops of the master and the source
agent, with real agents and the real clock: a fleet for each test. (What a held mapping sends
on release, on one fleet: test_held_changes.py.)"""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import UTC, datetime

import pytest

from relaysync.testing.cluster import wait_until
from tests.integration._modes import hold, journaled_ops, send_argv, set_mode, stays_absent
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet

pytestmark = pytest.mark.integration


OWN_FLEET_AGENTS = ("src", "t1")  # own_fleet (conftest.py): a fleet for each test


def test_manual_mode_holds_changes_until_sent_even_across_restarts(own_fleet: Fleet) -> None:
    mapping, src, (dst,) = own_fleet.new_mapping(targets=("t1",))
    (src / "before").write_text("realtime")
    own_fleet.wait_converged(src, [dst])
    journal = hold(own_fleet, mapping)
    (src / "held.txt").write_text("waits for the operator")
    # the negative checks below start once the source has the change: only the mode holds it back
    wait_until(
        lambda: ("write", "held.txt") in journaled_ops(journal),
        timeout_s=30,
        what="held.txt journaled",
    )
    assert stays_absent(dst / "held.txt", 2.0)
    # the pending set survives a kill -9 of the source and a restart of the master
    log = own_fleet.cluster.base / "agent-src.log"
    starts = log.read_text().count("(manual mode)")
    own_fleet.cluster.agents["src"].process.kill()
    own_fleet.cluster.master.stop()
    own_fleet.cluster.start_master()
    own_fleet.cluster.start_agent("src")
    wait_until(
        lambda: log.read_text().count("(manual mode)") > starts,
        timeout_s=30,
        what="the restarted source running (in manual mode)",
    )
    assert stays_absent(dst / "held.txt", 1.0)
    r = own_fleet.cluster.api.post(f"/api/mappings/{mapping['id']}/send")
    assert r.status_code == 200 and r.json()["release"] == 1
    own_fleet.wait_converged(src, [dst])
    wait_until(
        lambda: (
            own_fleet.cluster.api.get(f"/api/mappings/{mapping['id']}/mode").json()["released_upto"]
            > 0
        ),
        timeout_s=CONVERGE_TIMEOUT_S,
        what="release reported",
    )


def test_missed_reserved_run_happens_once_at_start(own_fleet: Fleet) -> None:
    mapping, src, (dst,) = own_fleet.new_mapping(targets=("t1",))
    # Held first under a run far ahead, so that however long the agent takes to hold and journal,
    # the run whose time passes while the master is down is set only just before it is stopped.
    far = datetime.fromtimestamp(time.time() + 3600, UTC).isoformat()
    set_mode(own_fleet, mapping["id"], mode="reserved", schedule=f"at:{far}")
    wait_until(
        lambda: "(reserved mode)" in (own_fleet.cluster.base / "agent-src.log").read_text(),
        timeout_s=CONVERGE_TIMEOUT_S,
        what="the source running in reserved mode",
    )
    (src / "missed.txt").write_text("the master was down at the reserved time")
    journal = own_fleet.cluster.agents["src"].data_dir / "sources" / str(mapping["id"]) / "journal"
    wait_until(
        lambda: ("write", "missed.txt") in journaled_ops(journal),
        timeout_s=CONVERGE_TIMEOUT_S,
        what="missed.txt journaled",
    )
    at_s = time.time() + 10
    set_mode(
        own_fleet,
        mapping["id"],
        mode="reserved",
        schedule=f"at:{datetime.fromtimestamp(at_s, UTC).isoformat()}",
    )
    own_fleet.cluster.master.stop()
    # the reserved time passes while the master is down: this is the scenario itself
    time.sleep(max(0.0, at_s - time.time()) + 1)
    own_fleet.cluster.start_master()
    own_fleet.wait_converged(src, [dst])
    info = own_fleet.cluster.api.get(f"/api/mappings/{mapping['id']}/mode").json()
    assert info["release"] == 1  # once, not once per missed slot
    assert info["next_run_at"] is None


def test_a_held_fast_mapping_after_a_reboot_sends_nothing_until_the_next_release(
    own_fleet: Fleet,
) -> None:
    """After a machine crash the fast journal starts a new id (targets catch up by comparing);
    the comparison must wait for the operator's next send, then bring everything."""
    mapping, src, (dst,) = own_fleet.new_mapping(targets=("t1",), durability="fast")
    journal = hold(own_fleet, mapping)
    (src / "released.txt").write_text("sent by the operator")
    wait_until(
        lambda: ("write", "released.txt") in journaled_ops(journal),
        timeout_s=30,
        what="the write journaled",
    )
    assert own_fleet.cluster.api.post(f"/api/mappings/{mapping['id']}/send").status_code == 200
    wait_until(
        lambda: (dst / "released.txt").exists(),
        timeout_s=CONVERGE_TIMEOUT_S,
        what="release 1 on t1",
    )
    (src / "held.txt").write_text("waits for the operator")
    wait_until(
        lambda: ("write", "held.txt") in journaled_ops(journal),
        timeout_s=30,
        what="the held write journaled",
    )
    agent = own_fleet.cluster.agents["src"]
    agent.process.kill()
    (journal / "boot").write_text("a-boot-before-the-crash open fast\n")  # the machine rebooted
    own_fleet.cluster.start_agent("src")
    assert stays_absent(dst / "held.txt", 3.0), "an unreleased change went out without a send"
    assert own_fleet.cluster.api.post(f"/api/mappings/{mapping['id']}/send").status_code == 200
    own_fleet.wait_converged(src, [dst])


def test_send_says_which_source_agent_has_not_taken_the_release(own_fleet: Fleet) -> None:
    """With the source agent stopped, `relaysync send` showed nothing for its 10 minutes and
    then said `relaysync status` shows which targets lag, which showed none."""
    mapping, _src, _ = own_fleet.new_mapping(targets=("t1",))
    hold(own_fleet, mapping)
    own_fleet.cluster.agents["src"].process.stop()
    done = subprocess.run(
        send_argv(own_fleet, mapping["id"], "--timeout", "8"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    said = " ".join((done.stdout + done.stderr).split())
    assert done.returncode == 17, said
    assert "waiting for the source agent src" in said  # after NOT_TAKEN_NOTE_S, while it waits
    assert "The source agent src" in said and "did not take the release within 8" in said
    assert "Traceback" not in said

    out = own_fleet.base / "send-interrupted.txt"  # Ctrl-C while it waits: the release goes on
    with out.open("w") as sink:
        following = subprocess.Popen(
            send_argv(own_fleet, mapping["id"], "--timeout", "60"),
            stdout=sink,
            stderr=subprocess.STDOUT,
            text=True,
            # as from a terminal: a suite started in the background inherits SIGINT ignored
            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
        )
        try:
            wait_until(
                lambda: "waiting for the source agent" in out.read_text(),
                timeout_s=30,
                what="send waiting for the source",
            )
            following.send_signal(signal.SIGINT)
            assert following.wait(30) == 130
        finally:
            if following.poll() is None:
                following.kill()
                following.wait(10)
    said = " ".join(out.read_text().split())
    assert "stopped following: release 2 of" in said and "goes on" in said, said
    assert "Traceback" not in said
