"""A source revoked in use (POST /api/servers/{name}/revoke: a stolen key) writes to none of its
mapping's targets, neither the real agent nor anyone holding its key at a target's peer port; the
targets keep their files, and the mapping given another source is served again. The real agent,
refused by its master, stands down: it stops its source and links (keeping its files and state)
instead of retrying its refused sessions for ever.

Found in review: peers have no revocation list, and the targets still got the mapping naming the
revoked source, fell back to it as their parent (no routing table while the source is down) and
took its data: the running source's file, and a file planted with its key. Then: the revoked
agent went on with its last assignment and retried each target every 2 s (10 s after a minute)
for ever, a log line each time on both sides."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import anyio
import pytest
import xxhash

from relaysync.constants import PROTOCOL_VERSION
from relaysync.protocol.messages import (
    AnyMessage,
    Checkpoint,
    FileChunk,
    FileEnd,
    FileStart,
    Hello,
    MappingState,
    OpenMapping,
)
from relaysync.testing.cluster import wait_until
from relaysync.transfer import tls
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet

pytestmark = pytest.mark.integration

OWN_FLEET_AGENTS = ("src", "t1", "t2")
STOOD_DOWN = "the master refused this agent (revoked or removed from the fleet): stopped"
# Long enough for the old retries to show: refused sessions every 2 s in the first minute.
QUIET_S = 10.0
PLANTED = b"planted by a revoked node\n"


async def _open(identity: tls.Identity, address: str, mapping_id: int, *, plant: bool) -> object:
    """Open a session for the mapping with the stolen key; with `plant`, write planted.html on
    it if the target takes it. The target's answer to OpenMapping (or to the file)."""
    framed = await tls.connect(address, tls.client_context(identity))
    try:
        hello = Hello(
            protocol_version=PROTOCOL_VERSION, node_id=identity.node_id, name="evil", role="agent"
        )
        await framed.send(hello)
        assert isinstance(await framed.receive(), Hello)
        await framed.send(OpenMapping(mapping_id=mapping_id, journal_id="stolen"))
        state = await framed.receive()
        if not plant or not isinstance(state, MappingState):
            return state
        ops: list[AnyMessage] = [
            FileStart(seq=1, path="planted.html", size=len(PLANTED), mode=0o644, mtime_ns=0),
            FileChunk(seq=1, offset=0, data=PLANTED),
            FileEnd(seq=1, hash=xxhash.xxh3_128(PLANTED).digest()),
            Checkpoint(seq=1),
        ]
        await framed.send_many(ops)
        return await framed.receive()
    finally:
        await framed.aclose()


def _log(fleet: Fleet, name: str) -> str:
    return fleet.cluster.agents[name].process.log_path.read_text(errors="replace")


def _sessions_logged(fleet: Fleet, name: str) -> int:
    """Peer sessions the agent refused or saw end, as its log says."""
    return _log(fleet, name).count("peer session")


def _attempts_logged(fleet: Fleet) -> int:
    """The sessions src's link to t1 saw refused (or fail), as its log says."""
    log = _log(fleet, "src")
    return log.count("link to t1 waits") + log.count("link to t1 down")


def _stays(condition: Callable[[], bool], seconds: float) -> bool:
    """True if `condition` holds for `seconds` on end (a bounded negative check)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if not condition():
            return False
        time.sleep(0.1)
    return True


def test_a_revoked_source_writes_to_no_target_and_another_source_serves_them_again(
    own_fleet: Fleet, tmp_path: Path
) -> None:
    fleet = own_fleet
    mapping, src, dsts = fleet.new_mapping(targets=("t1",))
    (src / "before.txt").write_text("before")
    fleet.wait_converged(src, dsts)
    identity = tls.Identity.in_directory(fleet.cluster.agents["src"].data_dir / "identity")
    address = fleet.cluster.api.get("/api/servers/t1").json()["address"]

    def opened(*, plant: bool = False) -> object:
        return anyio.run(lambda: _open(identity, address, int(mapping["id"]), plant=plant))

    assert isinstance(opened(), MappingState)  # src is the parent: its key is taken
    revoked = fleet.cluster.api.post("/api/servers/src/revoke")
    assert revoked.status_code == 200 and revoked.json()["source_of"] == [mapping["name"]]

    # (b) Anyone holding src's key: refused once t1 runs the assignment made after the revoke.
    wait_until(
        lambda: not isinstance(opened(), MappingState),
        timeout_s=CONVERGE_TIMEOUT_S,
        what="t1 refusing the revoked source's key",
    )
    assert not isinstance(opened(plant=True), MappingState)
    assert not (dsts[0] / "planted.html").exists()

    # (a) The real src agent stands down (its master refuses it): its source and its links stop,
    # so it tries t1 no more; it kept its files and its state.
    wait_until(
        lambda: STOOD_DOWN in _log(fleet, "src"),
        timeout_s=CONVERGE_TIMEOUT_S,
        what="src standing down",
    )
    assert _log(fleet, "src").count(STOOD_DOWN) == 1
    attempts, refused = _attempts_logged(fleet), _sessions_logged(fleet, "t1")
    (src / "after-revoke.txt").write_text("written on the revoked source")
    assert _stays(
        # t1 may still log an attempt that was in flight as src stood down
        lambda: (
            _attempts_logged(fleet) == attempts and _sessions_logged(fleet, "t1") <= refused + 1
        ),
        QUIET_S,
    ), (_attempts_logged(fleet) - attempts, _sessions_logged(fleet, "t1") - refused)
    assert not (dsts[0] / "after-revoke.txt").exists()
    state = fleet.cluster.agents["src"].data_dir / "sources" / str(mapping["id"])
    assert state.is_dir() and any(state.iterdir())  # its journal and manifest kept
    assert (src / "before.txt").read_text() == "before"
    assert (dsts[0] / "before.txt").read_text() == "before"  # t1 kept its files
    status = fleet.cluster.api.get(f"/api/mappings/{mapping['id']}/status").json()
    assert "'src' was revoked" in status["source_error"]  # the operator is told why, and how
    listed = {m["id"]: m for m in fleet.cluster.api.get("/api/mappings").json()}[mapping["id"]]
    assert listed["state"] == "source_revoked"  # sent disabled: not listed as enabled

    # The operator gives the mapping another source: t1 serves it again.
    spare = tmp_path / "spare-source"
    spare.mkdir()
    (spare / "before.txt").write_text("before")
    (spare / "from-spare.txt").write_text("from the spare")
    r = fleet.cluster.api.patch(
        f"/api/mappings/{mapping['id']}", json={"source": "t2", "source_path": str(spare)}
    )
    assert r.status_code == 200, r.text
    fleet.wait_converged(spare, dsts)
    assert not fleet.cluster.api.get(f"/api/mappings/{mapping['id']}/status").json()["source_error"]
    assert fleet.cluster.api.get(f"/api/mappings/{mapping['id']}").json()["state"] == "enabled"
