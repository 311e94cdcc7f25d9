"""A fleet in one process for the control-link tests: the master's CA, store, REST API and control
certificate, agents joined through the real POST /api/join, and the real ControlServer on loopback."""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import msgspec
from fastapi.testclient import TestClient

from relaysync.agent.enrollment import MASTER_FILE
from relaysync.agent.service import AgentService
from relaysync.auth.ca import CertificateAuthority, make_key_and_csr
from relaysync.config.schema import AgentConfig
from relaysync.constants import MASTER_NODE_NAME
from relaysync.master.app import create_app
from relaysync.master.control import ControlServer
from relaysync.master.events import EventBus
from relaysync.master.joblog import JobLogWriter
from relaysync.master.store import Store
from relaysync.protocol.framing import FramedStream
from relaysync.protocol.handshake import client_hello
from relaysync.protocol.messages import Ping, Pong, Register
from relaysync.transfer import tls

ADMIN = "admin-secret"
TIMEOUT_S = 10


def write_identity(directory: Path, key_pem: bytes, cert_pem: bytes, ca_pem: bytes) -> tls.Identity:
    directory.mkdir(parents=True, exist_ok=True)
    ident = tls.Identity.in_directory(directory)
    ident.key_path.write_bytes(key_pem)
    ident.cert_path.write_bytes(cert_pem)
    ident.ca_path.write_bytes(ca_pem)
    return ident


class Fleet:
    """The master's side over `store`; `join` makes agents' identities as `relaysync agent --token` does."""

    def __init__(self, tmp: Path, store: Store) -> None:
        self.tmp = tmp
        self.store = store
        self.ca = CertificateAuthority.load_or_create(tmp / "ca")
        self.events = EventBus()
        key, cert = self.ca.issue(MASTER_NODE_NAME, ["127.0.0.1", "localhost"])
        self.master = write_identity(tmp / "master", key, cert, self.ca.ca_pem)
        app = create_app(
            store=store,
            ca=self.ca,
            events=self.events,
            admin_token=ADMIN,
            control_address="127.0.0.1:1",
            on_change=lambda: None,
            master_node_id=self.master.node_id,
        )
        self.client = TestClient(app, headers={"Authorization": f"Bearer {ADMIN}"})
        self.joined: dict[str, dict[str, str]] = {}  # name -> join reply

    def join(self, name: str) -> tls.Identity:
        """Join an agent through POST /api/join with a fresh token."""
        token = self.client.post("/api/tokens/join", json={}).json()["token"]
        key, csr = make_key_and_csr(name)
        resp = self.client.post(
            "/api/join", json={"token": token, "name": name, "csr_pem": csr.decode()}
        )
        assert resp.status_code == 200, resp.text
        body = resp.json()
        self.joined[name] = body
        return write_identity(
            self.tmp / "agents" / name / body["node_id"][:8],
            key,
            body["cert_pem"].encode(),
            body["ca_pem"].encode(),
        )

    def issue(self, name: str) -> tls.Identity:
        """An identity from the fleet's CA that never joined (or joined before names were checked)."""
        key, cert = self.ca.issue(name, ["127.0.0.1"])
        return write_identity(self.tmp / "issued" / name, key, cert, self.ca.ca_pem)

    def agent_service(self, name: str, control_port: int) -> AgentService:
        """An in-process agent joined through the real /api/join, its identity where
        `relaysync agent` keeps it, its master's control server on `control_port`."""
        joined = self.join(name)
        data = self.tmp / name
        shutil.copytree(joined.key_path.parent, data / "identity")
        (data / "identity" / MASTER_FILE).write_text(
            msgspec.json.encode(
                {
                    "control_address": f"127.0.0.1:{control_port}",
                    "master_node_id": self.master.node_id,
                }
            ).decode()
        )
        return AgentService(
            AgentConfig(master_url="http://127.0.0.1:1", name=name, data_dir=str(data))
        )

    def close(self) -> None:
        self.client.close()

    @asynccontextmanager
    async def control_server(
        self, host: str = "127.0.0.1"
    ) -> AsyncIterator[tuple[ControlServer, int]]:
        """The master's real ControlServer on a loopback port, over this fleet's store and events."""
        control = ControlServer(
            host=host,
            port=0,
            ctx=tls.server_context(self.master),
            store=self.store,
            events=self.events,
            joblog=JobLogWriter(self.store, self.events),
        )
        async with anyio.create_task_group() as tg:
            port = await tg.start(control.serve)
            try:
                yield control, port
            finally:
                tg.cancel_scope.cancel()


@asynccontextmanager
async def agent_link(
    port: int, ident: tls.Identity, name: str, register: Register | None = None
) -> AsyncIterator[FramedStream]:
    """An agent's control link by hand: Hello and Register (`register`, or a plain one), then
    the test speaks."""
    framed = await tls.connect(f"127.0.0.1:{port}", tls.client_context(ident))
    try:
        with anyio.fail_after(TIMEOUT_S):
            await client_hello(framed, node_id=ident.node_id, name=name)
            await framed.send(
                register or Register(name=name, region="", group="", peer_address="127.0.0.1:9")
            )
        yield framed
    finally:
        framed.abort()


async def roundtrip(framed: FramedStream) -> list[object]:
    """Ping and wait for the Pong: the master reads in order, so all sent before was handled.

    Returns:
        what came before the Pong (assignments).
    """
    before: list[object] = []
    with anyio.fail_after(TIMEOUT_S):
        await framed.send(Ping(nonce=7))
        while not isinstance(message := await framed.receive(), Pong):
            before.append(message)
    return before
