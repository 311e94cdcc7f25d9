"""A link's TLS setting observed on the wire: the bytes the agents exchange on the loopback,
captured with a packet socket, are a TLS handshake and records when the policy says TLS, and
plain frames (the file's bytes readable) only where the operator turned TLS off; a plain link
through a relay authenticates hop by hop."""

from __future__ import annotations

import shutil
import socket
import ssl
import struct
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import anyio
import msgspec
import pytest

from relaysync.agent.source import SourceMapping
from relaysync.protocol.messages import Assignment
from relaysync.testing.cluster import wait_until
from relaysync.transfer import ops
from relaysync.transfer.link_ends import TargetAddress
from relaysync.transfer.sender import TargetLink
from relaysync.watch._fsevent import FsEvent
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet, start_fleet

pytestmark = pytest.mark.integration

ETH_P_ALL = 0x0003
ROUTE_TIMEOUT_S = 60.0


SO_RCVBUFFORCE = 33  # Linux <asm-generic/socket.h>; Python's socket module does not name it


class LoopbackCapture:
    """TCP payloads sent to some ports on `lo`, per connection (client port), in arrival order.

    A packet socket sees each loopback segment once or twice (outgoing and incoming); a segment
    is kept once, by its sequence number. Needs root (CAP_NET_RAW), as the tests run here.
    """

    def __init__(self) -> None:
        self.ports: set[int] = set()
        self.streams: dict[tuple[int, int], dict[int, bytes]] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
        self._sock.bind(("lo", 0))
        # Every test running beside this one uses `lo` too: a deep queue, so that the kernel
        # drops none of the packets while this thread filters them in Python (root may force it).
        self._sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 64 * 1024 * 1024)
        self._sock.settimeout(0.1)
        self._thread = threading.Thread(target=self._run, name="capture", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                frame = self._sock.recv(65536 + 14)
            except TimeoutError:
                continue
            except OSError:
                return
            self._take(frame)

    def _take(self, frame: bytes) -> None:
        if len(frame) < 14 + 20 or frame[12:14] != b"\x08\x00":
            return  # not IPv4
        ip = frame[14:]
        header = (ip[0] & 0x0F) * 4
        total = struct.unpack_from(">H", ip, 2)[0]
        if ip[9] != socket.IPPROTO_TCP or len(ip) < header + 20:
            return
        tcp = ip[header:total]
        sport, dport, seq = struct.unpack_from(">HHI", tcp, 0)
        payload = tcp[(tcp[12] >> 4) * 4 :]
        if payload and dport in self.ports:
            with self._lock:
                self.streams.setdefault((dport, sport), {})[seq] = payload

    def to_port(self, port: int) -> list[bytes]:
        """Each connection's client-to-server bytes to `port`, joined in sequence order."""
        with self._lock:
            return [
                b"".join(seg for _, seg in sorted(segs.items()))
                for (dport, _), segs in self.streams.items()
                if dport == port
            ]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self._sock.close()


@pytest.fixture
def capture() -> Iterator[LoopbackCapture]:
    cap = LoopbackCapture()
    try:
        yield cap
    finally:
        cap.close()


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[Fleet]:
    f = start_fleet(tmp_path, agents=("src", "t1", "t2"))
    try:
        yield f
    finally:
        f.cluster.stop()


def _is_tls(stream: bytes) -> bool:
    """A TLS client's first bytes: a handshake record (0x16) of version 3.x."""
    return stream[:1] == b"\x16" and stream[1:2] == b"\x03"


def _write_marked(src: Path, name: str) -> bytes:
    marker = f"plain-on-the-wire-{uuid.uuid4().hex}".encode()
    (src / name).write_bytes(marker * 64)
    return marker


def _set_tls(fleet: Fleet, *, tls: bool, wait_for: str = "src") -> None:
    """Set the group's TLS policy and wait until agent `wait_for` runs its new assignment."""
    log = fleet.cluster.base / f"agent-{wait_for}.log"
    before = log.read_text().count("running assignment")
    r = fleet.cluster.api.put("/api/policies", json={"scope": "same_group", "tls": tls})
    assert r.status_code == 200, r.text
    wait_until(
        lambda: log.read_text().count("running assignment") > before,
        timeout_s=CONVERGE_TIMEOUT_S,
        what=f"{wait_for}'s new assignment",
    )


def test_tls_by_default_and_plain_only_where_turned_off(
    fleet: Fleet, capture: LoopbackCapture
) -> None:
    port = fleet.peer_port("t1")
    capture.ports.add(port)
    _, src, (dst,) = fleet.new_mapping(targets=("t1",))
    marker = _write_marked(src, "secret.txt")
    fleet.wait_converged(src, [dst])
    streams = capture.to_port(port)
    assert streams and all(_is_tls(s) for s in streams), [s[:8] for s in streams]
    assert not any(marker in s for s in streams)  # the file's bytes never travel readable

    _set_tls(fleet, tls=False)  # the operator trusts the group's LAN
    seen = len(streams)
    marker = _write_marked(src, "open.txt")
    fleet.wait_converged(src, [dst])
    wait_until(
        lambda: any(marker in s for s in capture.to_port(port)[seen:]),
        timeout_s=CONVERGE_TIMEOUT_S,
        what="the file's bytes on the plain link",
    )
    plain = [s for s in capture.to_port(port)[seen:] if marker in s]
    assert not _is_tls(plain[0]) and b"hello" in plain[0][:64]  # our Hello frame, in the clear

    seen = len(capture.to_port(port))  # the connections so far: TLS, then plain
    _set_tls(fleet, tls=True)  # and back: the link reconnects with TLS
    marker = _write_marked(src, "closed.txt")
    fleet.wait_converged(src, [dst])
    later = wait_until(
        lambda: capture.to_port(port)[seen:],
        timeout_s=CONVERGE_TIMEOUT_S,
        what="the new connection's bytes",
    )
    assert all(_is_tls(s) for s in later), [s[:8] for s in later]
    assert not any(marker in s for s in capture.to_port(port))


def test_a_plain_link_through_a_relay_authenticates_each_hop(
    fleet: Fleet, capture: LoopbackCapture
) -> None:
    """src -> t1 -> t2 with TLS off: t1 proves to t2 the secret of their hop (only they and the
    master hold it); the file arrives at t2 over a plain link from t1."""
    _set_tls(fleet, tls=False)
    port = fleet.peer_port("t2")
    capture.ports.add(port)
    mapping, src, dsts = fleet.new_mapping(targets=("t1", "t2"))
    r = fleet.cluster.api.put(
        f"/api/mappings/{mapping['id']}/routing",
        json={"mode": "manual", "hops": [["src", "t1"], ["t1", "t2"]]},
    )
    assert r.status_code == 200, r.text
    deadline = time.monotonic() + ROUTE_TIMEOUT_S
    marker = b""
    for i in range(200):  # the route reaches the agents a moment after it is set
        marker = _write_marked(src, f"relayed-{i}.txt")
        fleet.wait_converged(src, dsts)
        if (
            _latest_route(fleet, int(mapping["id"]), "t2") == "src>t1>t2"
            or time.monotonic() > deadline
        ):
            break
    assert _latest_route(fleet, int(mapping["id"]), "t2") == "src>t1>t2"
    # Refusals while the route reached the agents are transient (t1 may call before t2's
    # assignment names it the parent); once settled, t1's plain link authenticates.
    t2_log = fleet.cluster.base / "agent-t2.log"
    settled_at = len(t2_log.read_text())
    marker = _write_marked(src, "relayed-settled.txt")
    fleet.wait_converged(src, dsts)
    # The capture thread reads every loopback packet of the machine (other tests' too): it may
    # lag behind the link, so its view of the last file is waited for, bounded.
    relayed = wait_until(
        lambda: [s for s in capture.to_port(port) if marker in s],
        timeout_s=CONVERGE_TIMEOUT_S,
        what="the relayed file's bytes on the link to t2",
    )
    assert not _is_tls(relayed[-1]), "the relayed file did not reach t2 over a plain link"
    log = t2_log.read_text()[settled_at:]
    assert "failed plain-link authentication" not in log, log[-2000:]


def _latest_route(fleet: Fleet, mapping_id: int, target: str) -> str:
    r = fleet.cluster.api.get(
        "/api/advances", params={"mapping": str(mapping_id), "target": target, "limit": 1}
    )
    assert r.status_code == 200, r.text
    rows = r.json()
    return str(rows[0]["route"]) if rows else ""


# --- TLS back on: the target ends a plain session itself ---------------------------------
# The operator turns TLS back on. The target learns it from its new assignment (no link secret
# any more); a plain session opened before must not go on being accepted, whatever the sender
# does: a source whose control link to the master is down runs its persisted assignment. The
# stale source here is an in-process TargetLink with exactly src's credentials (its node id and
# the link secret of its persisted assignment); the real src agent is stopped first.


def test_a_live_plain_session_ends_when_the_target_requires_tls_again(
    fleet: Fleet, tmp_path: Path
) -> None:
    _set_tls(fleet, tls=False)  # the operator trusts the group's LAN
    mapping, src, (dst,) = fleet.new_mapping(targets=("t1",))
    (src / "before.txt").write_text("sent while the link was trusted")
    fleet.wait_converged(src, [dst])

    agent = fleet.cluster.agents["src"]
    saved = msgspec.msgpack.decode(
        (agent.data_dir / "assignment.msgpack").read_bytes(), type=Assignment
    )
    spec = next(m for m in saved.mappings if m.mapping_id == mapping["id"])
    (t1_spec,) = spec.targets
    assert t1_spec.link_secret and not t1_spec.policy.tls
    t1_node = fleet.cluster.agents["t1"].node_id
    t1_address = fleet.cluster.api.get("/api/servers/t1").json()["address"]
    agent.process.stop()  # the stale source below holds src's credentials

    stale_root = tmp_path / "stale"
    shutil.copytree(src, stale_root)
    source = SourceMapping(
        msgspec.structs.replace(spec, source_path=str(stale_root)), tmp_path / "stale-state"
    )
    link = TargetLink(
        source,
        TargetAddress(node_id=t1_node, name="t1", resolve=lambda: t1_address),
        ssl.create_default_context(),
        node_id=spec.source_node,
        name="src",
        options=ops.SendOptions(tls=False, link_secret=t1_spec.link_secret),
        erase=False,
    )
    arrived = False

    async def main() -> None:
        nonlocal arrived
        await source._record([FsEvent(kind="rescan", path="")])
        async with anyio.create_task_group() as tg:
            tg.start_soon(link.serve)
            with anyio.fail_after(20):
                while not link.connected:
                    await anyio.sleep(0.05)
            # The operator no longer trusts the LAN: TLS on. t1 runs the new policy.
            await anyio.to_thread.run_sync(lambda: _set_tls(fleet, tls=True, wait_for="t1"))
            saved_t1 = msgspec.msgpack.decode(
                (fleet.cluster.agents["t1"].data_dir / "assignment.msgpack").read_bytes(),
                type=Assignment,
            )
            own = next(
                t for m in saved_t1.mappings if m.mapping_id == mapping["id"] for t in m.targets
            )
            assert own.policy.tls and not own.link_secret  # t1 knows TLS is required now
            (stale_root / "after.txt").write_text("sent in the clear after TLS was required")
            await source._record([FsEvent(kind="write", path="after.txt")])
            with anyio.move_on_after(10):
                while not (dst / "after.txt").exists():
                    await anyio.sleep(0.05)
            arrived = (dst / "after.txt").exists()
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
    finally:
        source.close()
    assert not arrived, (
        "t1 committed a file received over a plain link after its policy required TLS "
        f"(link connected the whole time: {link.failures} failures)"
    )
