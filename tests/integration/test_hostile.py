"""Hostile input straight to an agent's peer port: refused, target unchanged, agent still serving."""

from __future__ import annotations

import socket
import ssl
import struct
from pathlib import Path

import anyio
import pytest

from relaysync.constants import PROTOCOL_VERSION
from relaysync.errors import TLSHandshakeFailed
from relaysync.protocol.framing import FramedStream
from relaysync.protocol.messages import (
    Checkpoint,
    Delete,
    Error,
    FileChunk,
    FileEnd,
    FileStart,
    Hello,
    MappingState,
    OpenMapping,
    Rename,
    Symlink,
)
from relaysync.transfer import tls
from tests._trees import snapshot
from tests.integration.conftest import Fleet

pytestmark = pytest.mark.integration


def _peer_address(fleet: Fleet, name: str) -> str:
    return str(fleet.cluster.api.get(f"/api/servers/{name}").json()["address"])


async def _session(
    fleet: Fleet, mapping_id: int, identity: tls.Identity, address: str
) -> FramedStream:
    framed = await tls.connect(address, tls.client_context(identity))
    await framed.send(
        Hello(
            protocol_version=PROTOCOL_VERSION, node_id=identity.node_id, name="evil", role="agent"
        )
    )
    assert isinstance(await framed.receive(), Hello)
    await framed.send(OpenMapping(mapping_id=mapping_id, journal_id="hostile"))
    return framed


def test_traversal_absolute_and_link_escape_refused(fleet: Fleet, tmp_path: Path) -> None:
    mapping, src, dsts = fleet.new_mapping(targets=("t1",))
    (src / "ok.txt").write_text("ok")
    fleet.wait_converged(src, dsts)
    before = snapshot(dsts[0])
    outside_before = sorted(p.name for p in dsts[0].parent.iterdir())
    identity = tls.Identity.in_directory(fleet.cluster.agents["src"].data_dir / "identity")
    address = _peer_address(fleet, "t1")

    async def attack() -> list[object]:
        framed = await _session(fleet, int(mapping["id"]), identity, address)
        assert isinstance(await framed.receive(), MappingState)
        import xxhash

        data = b"evil"
        digest = xxhash.xxh3_128(data).digest()
        replies: list[object] = []
        for seq, path in enumerate(
            ["../evil", "/etc/evil", "a/../../evil", "x\x00y", ".relaysync.x.tmp"], start=1
        ):
            await framed.send_many(
                [
                    FileStart(seq=seq, path=path, size=4, mode=0o644, mtime_ns=0),
                    FileChunk(seq=seq, offset=0, data=data),
                    FileEnd(seq=seq, hash=digest),
                    Checkpoint(seq=seq),
                ]
            )
            replies.append(await framed.receive())
        await framed.send_many([Delete(seq=10, path="../" + dsts[0].name), Checkpoint(seq=10)])
        replies.append(await framed.receive())
        await framed.send_many(
            [Rename(seq=11, path="ok.txt", new_path="../stolen"), Checkpoint(seq=11)]
        )
        replies.append(await framed.receive())
        await framed.aclose()
        return replies

    replies = anyio.run(attack)
    assert len(replies) == 7
    assert snapshot(dsts[0]) == before
    assert sorted(p.name for p in dsts[0].parent.iterdir()) == outside_before
    assert not Path("/etc/evil").exists()


def test_symlink_parent_never_followed(fleet: Fleet, tmp_path: Path) -> None:
    mapping, src, dsts = fleet.new_mapping(targets=("t1",))
    # the targets take a link out of the folder only if the operator trusts the source (the
    # default "safe" policy refuses it): here the link must be there for the attack to try it
    trust = {"symlinks": "any", "mode_mask": 2}
    r = fleet.cluster.api.put(f"/api/mappings/{mapping['id']}/target-policy", json=trust)
    assert r.status_code == 200, r.text
    outside = tmp_path / "outside"
    outside.mkdir()
    (src / "esc").symlink_to(outside)
    fleet.wait_converged(src, dsts)
    identity = tls.Identity.in_directory(fleet.cluster.agents["src"].data_dir / "identity")

    async def attack() -> None:
        framed = await _session(fleet, int(mapping["id"]), identity, _peer_address(fleet, "t1"))
        await framed.receive()
        await framed.send_many([Symlink(seq=1, path="esc/planted", target="x"), Checkpoint(seq=1)])
        await framed.receive()
        await framed.aclose()

    anyio.run(attack)
    assert list(outside.iterdir()) == []


def _raw_tls(fleet: Fleet, address: str) -> ssl.SSLSocket:
    identity = tls.Identity.in_directory(fleet.cluster.agents["src"].data_dir / "identity")
    host, port = address.rsplit(":", 1)
    raw = socket.create_connection((host, int(port)), timeout=10)
    return tls.client_context(identity).wrap_socket(raw)


@pytest.mark.parametrize(
    "payload",
    [
        struct.pack(">I", 512 * 1024 * 1024) + b"x" * 100,  # oversize frame
        b"\x00\x00\x00\x05garbage-not-msgpack" * 10,  # garbage
        struct.pack(">I", 3) + b"\xc1\xc1\xc1",  # undecodable
    ],
)
def test_bad_frames_close_the_connection(fleet: Fleet, payload: bytes) -> None:
    mapping, src, dsts = fleet.new_mapping(targets=("t1",))
    before = snapshot(dsts[0])
    sock = _raw_tls(fleet, _peer_address(fleet, "t1"))
    try:
        sock.sendall(payload)
        sock.settimeout(10)
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, ssl.SSLError):
        pass
    finally:
        sock.close()
    assert snapshot(dsts[0]) == before
    # still serving others
    (src / "after.txt").write_text("still alive")
    fleet.wait_converged(src, dsts)


def test_client_without_fleet_certificate_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    import trustme

    ca = trustme.CA()
    cert = ca.issue_cert("evil")
    key_path, cert_path, ca_path = tmp_path / "k.pem", tmp_path / "c.pem", tmp_path / "ca.pem"
    cert.private_key_pem.write_to_path(str(key_path))
    cert.cert_chain_pems[0].write_to_path(str(cert_path))
    ca.cert_pem.write_to_path(str(ca_path))
    fake = tls.Identity(key_path, cert_path, ca_path)
    address = _peer_address(fleet, "t1")

    async def connect() -> None:
        framed = await tls.connect(address, tls.client_context(fake))
        await framed.send(
            Hello(protocol_version=PROTOCOL_VERSION, node_id="x", name="evil", role="agent")
        )
        await framed.receive()

    with pytest.raises((TLSHandshakeFailed, Exception)) as info:
        anyio.run(connect)
    assert not isinstance(info.value, AssertionError)


def test_unknown_node_is_refused_for_a_mapping(fleet: Fleet) -> None:
    mapping, src, dsts = fleet.new_mapping(targets=("t1",))
    # t2's certificate is valid in the fleet, but t2 is not the source of this mapping
    identity = tls.Identity.in_directory(fleet.cluster.agents["t2"].data_dir / "identity")

    async def attempt() -> object:
        framed = await _session(fleet, int(mapping["id"]), identity, _peer_address(fleet, "t1"))
        reply = await framed.receive()
        await framed.aclose()
        return reply

    reply = anyio.run(attempt)
    assert isinstance(reply, Error)
    assert "unknown node" in reply.detail.lower()
