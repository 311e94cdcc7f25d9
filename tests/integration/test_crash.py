"""Crashes and outages: kill -9 of agents mid-burst, inotify overflow. Each test has its own fleet."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from relaysync.constants import CHUNK_BYTES
from relaysync.testing.cluster import Cluster, wait_until
from tests._trees import temp_files
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet, start_fleet

pytestmark = pytest.mark.integration


def test_target_killed_then_200_changes_converges(own_fleet: Fleet) -> None:
    _, src, dsts = own_fleet.new_mapping()
    (src / "before").write_text("before")
    own_fleet.wait_converged(src, dsts)
    own_fleet.cluster.agents["t1"].process.kill()
    for i in range(200):
        (src / f"f{i % 50}").write_text(f"version {i}")
        if i % 40 == 0:
            (src / f"d{i}").mkdir()
    (src / "before").unlink()
    own_fleet.cluster.start_agent("t1")
    own_fleet.wait_converged(src, dsts)


def test_target_killed_mid_transfer_leaves_old_or_new(own_fleet: Fleet) -> None:
    _, src, dsts = own_fleet.new_mapping(targets=("t1",))
    old = os.urandom(1000)
    (src / "big.bin").write_bytes(old)
    own_fleet.wait_converged(src, dsts)
    new = os.urandom(64 * 1024 * 1024)
    (src / "big.bin").write_bytes(new)
    # kill as soon as the temp file shows up on the target: mid-transfer
    wait_until(lambda: temp_files(dsts[0]), timeout_s=30, interval_s=0.002, what="transfer started")
    own_fleet.cluster.agents["t1"].process.kill()
    assert (dsts[0] / "big.bin").read_bytes() == old
    own_fleet.cluster.start_agent("t1")
    own_fleet.wait_converged(src, dsts)
    assert temp_files(dsts[0]) == []


def _new_dirs_in(root: Path) -> list[str]:
    try:
        return [
            n for n in os.listdir(root) if n.startswith(".relaysync.") and n.endswith(".newdir")
        ]
    except FileNotFoundError:
        return []


def test_target_killed_while_it_builds_new_folders_converges(own_fleet: Fleet) -> None:
    """kill -9 of a target while a folder it makes is still under its temp name (its files
    written in it, transfer/_new_dirs.py): nothing of that folder is visible, the restart
    removes it, and the source's resend completes the copy."""
    _, src, dsts = own_fleet.new_mapping(targets=("t1",))
    for d in range(60):
        folder = src / f"d{d:02d}"
        folder.mkdir()
        for i in range(60):
            (folder / f"f{i}").write_bytes(os.urandom(2048))
    wait_until(
        lambda: _new_dirs_in(dsts[0]), timeout_s=30, interval_s=0.0005, what="a folder staged"
    )
    own_fleet.cluster.agents["t1"].process.kill()
    for name in _new_dirs_in(dsts[0]):  # ".relaysync.d07.<salt><n>.newdir": d07 not there yet
        assert not (dsts[0] / name.split(".")[2]).exists()
    own_fleet.cluster.start_agent("t1")
    own_fleet.wait_converged(src, dsts)
    assert temp_files(dsts[0]) == []


def test_source_killed_mid_burst_converges(own_fleet: Fleet) -> None:
    _, src, dsts = own_fleet.new_mapping()
    for i in range(300):
        (src / f"burst-{i}").write_bytes(os.urandom(2000))
        if i == 150:
            own_fleet.cluster.agents["src"].process.kill()
    for i in range(0, 300, 7):
        (src / f"burst-{i}").unlink()
    own_fleet.cluster.start_agent("src")
    own_fleet.wait_converged(src, dsts)


def _journal_as_on_disk_before(journal: Path, head: int) -> None:
    """What a machine crash can leave of a journal written without fsync: the disk holds it as
    it was when its head was `head` (everything up to it released, nothing later written)."""
    for seg in journal.glob("*.seg"):
        seg.unlink()
    (journal / f"{head + 1:020d}.seg").touch()
    (journal / "released").write_text(str(head))


def test_fast_source_losing_its_journal_tail_in_a_machine_crash_still_sends_new_changes(
    own_fleet: Fleet,
) -> None:
    mapping, src, dsts = own_fleet.new_mapping(targets=("t1",), durability="fast")
    for i in range(6):
        (src / f"before-{i}").write_text(f"before {i}")
    own_fleet.wait_converged(src, dsts)

    def acked() -> bool:
        rows = own_fleet.cluster.api.get(f"/api/mappings/{mapping['id']}/status").json()["targets"]
        return bool(rows) and all(r["lag"] == 0 and r["watermark"] >= 6 for r in rows)

    wait_until(acked, timeout_s=CONVERGE_TIMEOUT_S, what="t1 acked every change")
    agent = own_fleet.cluster.agents["src"]
    agent.process.kill()
    # The machine "crashes": the journal's last 5 records never reached the disk, and the
    # journal was left open under a boot that is not this one.
    journal = agent.data_dir / "sources" / str(mapping["id"]) / "journal"
    _journal_as_on_disk_before(journal, head=1)
    (journal / "boot").write_text("a-boot-before-the-crash open fast\n")
    own_fleet.cluster.start_agent("src")
    (src / "probe").write_text("after the restart")
    own_fleet.wait_converged(src, dsts)
    # Journaled after the catch-up, with seqs t1 acked before the crash under the old journal id:
    for i in range(4):
        (src / f"after-{i}").write_text(f"after {i}")
    own_fleet.wait_converged(src, dsts)


@pytest.mark.serial
def test_inotify_overflow_is_detected_and_rescanned(tmp_path: Path) -> None:
    knob = Path("/proc/sys/fs/inotify/max_queued_events")
    saved = knob.read_text()
    knob.write_text("16\n")  # new inotify instances get this queue size
    try:
        fleet = start_fleet(tmp_path)
    finally:
        knob.write_text(saved)
    try:
        _, src, dsts = fleet.new_mapping()
        for i in range(2000):
            (src / f"o{i}").write_bytes(b"x" * (i % 100))
        fleet.wait_converged(src, dsts, timeout_s=60)
        log = (fleet.cluster.base / "agent-src.log").read_text()
        assert "overflow" in log.lower()
    finally:
        fleet.cluster.stop()


RESUME_LIMIT = {
    "RELAYSYNC_BANDWIDTH_LIMIT_MBIT": "200"
}  # 25 MB/s on every hop: slow enough to kill mid-file


def _write_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        for _ in range(size // CHUNK_BYTES):
            f.write(os.urandom(CHUNK_BYTES))


def _partial_size(root: Path, name: str) -> int:
    """Bytes in the resumable partial of `name` under root (0: none)."""
    for p in root.iterdir():
        if p.name.startswith(f".relaysync.{name}.") and p.name.endswith(".part"):
            try:
                return p.stat().st_size
            except FileNotFoundError:
                return 0
    return 0


def _resume_offsets(log: Path, name: str) -> list[int]:
    return [
        int(m) for m in re.findall(rf"resuming {re.escape(name)} at offset (\d+)", log.read_text())
    ]


SETTLE_WINDOW_S = (
    0.3  # unchanged over this long: the bytes in flight when the sender died are written
)
SETTLE_TIMEOUT_S = 60.0


def _settled(read: Callable[[], int]) -> int:
    """The value once it stops changing (a killed sender's last bytes are still being written).

    Stability over a window is the condition itself (no event marks the last byte in flight);
    a value read too early only makes the caller's bound on what is sent again looser."""
    deadline = time.monotonic() + SETTLE_TIMEOUT_S
    last = -1
    while (now := read()) != last:
        if time.monotonic() > deadline:
            raise AssertionError(
                f"still changing after {SETTLE_TIMEOUT_S} s: {last} then {now} bytes"
            )
        last = now
        time.sleep(SETTLE_WINDOW_S)
    return last


# The child takes no session from the source (a firewall between them): with its relay down it
# waits for it. Without this the master routes around a dead relay at once (`fail_after_s` only
# marks a target failed, it does not hold the route) and the source resumes the child itself.
CHILD_ENV = {**RESUME_LIMIT, "RELAYSYNC_REFUSE_PEERS": "src"}


def _relay_fleet(
    tmp_path: Path, source_env: dict[str, str], child_env: dict[str, str] = RESUME_LIMIT
) -> Iterator[Fleet]:
    """src, and a1 and a2 in one group (a2 started with `child_env`)."""
    cluster = Cluster(tmp_path / "fleet")
    cluster.start_master()
    try:
        cluster.start_agent("src", region="origin", group="origin", env=source_env, wait=False)
        for name, env in (("a1", RESUME_LIMIT), ("a2", child_env)):
            cluster.start_agent(name, region="r1", group="r1g1", env=env, wait=False)
        for name in ("src", "a1", "a2"):
            cluster.wait_agent_up(name)
        yield Fleet(cluster, tmp_path)
    finally:
        cluster.stop()


@pytest.fixture
def relay_fleet(tmp_path: Path) -> Iterator[Fleet]:
    """src -> a1 -> a2, a2 reachable only through a1 (CHILD_ENV)."""
    yield from _relay_fleet(tmp_path, RESUME_LIMIT, CHILD_ENV)


@pytest.fixture
def fast_source_relay_fleet(tmp_path: Path) -> Iterator[Fleet]:
    """As relay_fleet, but the source's hop is not limited: the relay has a change whole (and
    committed) while its child is still receiving it."""
    yield from _relay_fleet(tmp_path, {})


def _relayed_mapping(
    relay_fleet: Fleet, want_relay: str | None = None
) -> tuple[Path, list[Path], str, str]:
    """A mapping to a1 and a2 routed src -> relay -> child (`want_relay` the relay if given, once
    the master has planned around a refused hop): its source, targets, relay and child."""
    cluster = relay_fleet.cluster
    mapping, src, dsts = relay_fleet.new_mapping(targets=("a1", "a2"))
    mapping_id = int(mapping["id"])
    r = cluster.api.put(
        f"/api/mappings/{mapping_id}/routing", json={"fail_after_s": 300}
    )  # a target down is not marked failed (dropped from the targets); routes still change
    assert r.status_code == 200, r.text

    def parents() -> dict[str, str]:
        hops = cluster.api.get(f"/api/mappings/{mapping_id}/routes").json()["hops"]
        return {h["child"]: h["parent"] for h in hops}

    plan = wait_until(
        lambda: (
            (p := parents())
            and len(p) == 2
            and (want_relay is None or p.get(want_relay) == "src")
            and p
        ),
        timeout_s=60,
        interval_s=0.1,
        what="a plan",
    )
    relay = next(c for c, p in plan.items() if p == "src")
    child = next(c for c, p in plan.items() if p == relay)
    return src, dsts, relay, child


def _peer_address(cluster: Cluster, name: str) -> str:
    """Where agent `name` served peers: it restarts there, as a server with its configured address
    does. On a new port its parent's link would retry the old one after the master saw it up, and
    the master would avoid that hop for HOP_FAILED_TTL_S: 60 s without a route to a child that
    takes nothing from the source (CHILD_ENV)."""
    log = (cluster.base / f"agent-{name}.log").read_text()
    return re.findall(r"peer server listening on (\S+)", log)[-1]


@contextmanager
def _stopped_once(pid: int, when: Callable[[], bool], stop_s: float) -> Iterator[None]:
    """SIGSTOP process `pid` for `stop_s` the first time `when()` holds while the block runs: a
    process starved of CPU (CI's load), deterministically."""
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            if when():
                os.kill(pid, signal.SIGSTOP)
                try:
                    done.wait(stop_s)
                finally:
                    os.kill(pid, signal.SIGCONT)
                return
            time.sleep(0.002)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        yield
    finally:
        done.set()
        watcher.join()


@pytest.mark.parametrize("killed", ["child", "relay", "source", "relay, under load"])
def test_resume_through_a_relay_hop(relay_fleet: Fleet, killed: str) -> None:
    """kill -9 the relay, its child or the source mid-file: what each target below had received is
    not sent to it again (at most one chunk of it). With the source killed the route stays: its
    parent resumes the relay, and the child gets what it lacks from the relay's spool and copy.
    With the relay killed the child, which takes nothing from the source (CHILD_ENV), keeps what
    it holds until the relay is back, which then resumes it from its spool and copy.

    "under load" stalls the source 1 s once the child holds 3 chunks more than at the kill, and
    the relay takes 3 s to restart, as on a loaded CI machine: had the source resumed the child
    itself (the master routes around a dead relay at once), the child's size would be read in
    that stall mid-stream, and its last resume be the source's, below it (a CI failure)."""
    cluster = relay_fleet.cluster
    src, dsts, relay, child = _relayed_mapping(relay_fleet, want_relay="a1")
    dir_of = dict(zip(("a1", "a2"), dsts, strict=True))
    (src / "warm").write_text("x")
    relay_fleet.wait_converged(src, dsts)
    role = killed.split(",")[0]
    victim = {"child": child, "relay": relay, "source": "src"}[role]
    size = 64 * CHUNK_BYTES
    _write_random(src / "big.bin", size)
    watched = child if role == "child" else relay
    wait_until(
        lambda: _partial_size(dir_of[watched], "big.bin") > 24 * CHUNK_BYTES,
        timeout_s=60,
        interval_s=0.005,
        what=f"{watched} holds 24 MiB",
    )
    cluster.agents[victim].process.kill()
    at_kill = _partial_size(dir_of[child], "big.bin")
    stall: contextlib.AbstractContextManager[None] = contextlib.nullcontext()
    if killed == "relay, under load":
        cluster.agents[victim].process.prefix = ("sh", "-c", 'sleep 3; exec "$@"', "sh")
        stall = _stopped_once(
            cluster.agents["src"].process.pid,
            lambda: _partial_size(dir_of[child], "big.bin") >= at_kill + 3 * CHUNK_BYTES,
            stop_s=1.0,
        )
    with stall:
        held = {
            t: _settled(lambda t=t: _partial_size(dir_of[t], "big.bin"))
            for t in ((child,) if role == "child" else (relay, child))
        }
        region, group = ("origin", "origin") if victim == "src" else ("r1", "r1g1")
        env = CHILD_ENV if victim == child else RESUME_LIMIT
        env = {**env, "RELAYSYNC_LISTEN": _peer_address(cluster, victim)}
        cluster.start_agent(victim, region=region, group=group, env=env)
        relay_fleet.wait_converged(src, dsts, timeout_s=90)
    for target, had in held.items():
        offsets = _resume_offsets(cluster.base / f"agent-{target}.log", "big.bin")
        sent_again = size - (offsets[-1] if offsets else 0)
        assert sent_again <= (size - had) + CHUNK_BYTES, (
            f"{killed} killed: {target} held {had} of {size} bytes; {sent_again} bytes were sent to it again"
        )


def _receiving_size(root: Path, name: str) -> int:
    """Bytes in the temp file `name` is being received into (a partial or not; 0: none)."""
    sizes = []
    for p in root.iterdir():
        if p.name.startswith(f".relaysync.{name}."):
            try:
                sizes.append(p.stat().st_size)
            except FileNotFoundError:
                pass
    return max(sizes, default=0)


@pytest.mark.parametrize(
    "case", ["the child lacks the delta's base", "the relay forwards the delta"]
)
def test_a_child_killed_mid_delta_resumes_through_its_relay(
    fast_source_relay_fleet: Fleet, case: str
) -> None:
    """A large file changes and reaches the relay as a delta. The child either lacks the delta's
    base (the relay sends the version whole from its own tree) or patches the forwarded delta into
    the version's partial; kill -9 of the child midway: what it had received is not sent to it
    again (at most one chunk of it), as when a source resumes it."""
    fleet = fast_source_relay_fleet
    cluster = fleet.cluster
    src, dsts, relay, child = _relayed_mapping(fleet)
    child_dir = dict(zip(("a1", "a2"), dsts, strict=True))[child]
    size = 64 * CHUNK_BYTES
    _write_random(src / "big.bin", size)
    fleet.wait_converged(src, dsts, timeout_s=90)
    if case == "the child lacks the delta's base":
        with open(
            child_dir / "big.bin", "r+b"
        ) as f:  # not the version its source sent (nor its manifest's)
            f.write(b"edited on the child")
        with open(src / "big.bin", "r+b") as f:  # a small edit: a small delta
            f.write(os.urandom(4096))
    else:
        _write_random(src / "big.bin", size)  # unrelated data: the delta is about the file's size
    wait_until(
        lambda: _receiving_size(child_dir, "big.bin") > 24 * CHUNK_BYTES,
        timeout_s=60,
        interval_s=0.005,
        what=f"{child} holds 24 MiB of the new version",
    )
    cluster.agents[child].process.kill()
    held = _settled(lambda: _partial_size(child_dir, "big.bin"))
    cluster.start_agent(child, region="r1", group="r1g1", env=RESUME_LIMIT)
    fleet.wait_converged(src, dsts, timeout_s=90)
    offsets = _resume_offsets(cluster.base / f"agent-{child}.log", "big.bin")
    sent_again = size - (offsets[-1] if offsets else 0)
    assert held >= 24 * CHUNK_BYTES and sent_again <= (size - held) + CHUNK_BYTES, (
        f"{case}: the child held {held} of {size} bytes; {sent_again} bytes were sent to it again"
    )
    assert temp_files(child_dir) == []
