"""Expired certificates and certificates from another fleet's CA, on the peer links and the control
link of real agents and a real master: each end says what went wrong (whose certificate, the
date, or "not signed by this fleet's CA") and what to do, never a bare reset or a hang."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import anyio
import pytest

from relaysync.auth.ca import CertificateAuthority
from relaysync.auth.validity import format_time, validity
from relaysync.constants import MASTER_NODE_NAME
from relaysync.errors import (
    CertificateExpired,
    CertificateRefused,
    ForeignCertificate,
    LinkDown,
    RelaySyncError,
)
from relaysync.protocol.framing import FramedStream
from relaysync.protocol.handshake import client_hello
from relaysync.testing.cluster import Cluster, Process, wait_until
from relaysync.transfer import tls
from tests._certs import dated_identity, expired_identity, trusting
from tests._metrics import metric_families
from tests.integration.conftest import Fleet

pytestmark = pytest.mark.integration

TIMEOUT_S = 20.0
DAY_S = 86400


def _control_address(fleet: Fleet) -> str:
    return str(
        json.loads((fleet.cluster.master_dir / "master.json").read_text())["control_address"]
    )


def _peer_address(fleet: Fleet, name: str) -> str:
    return str(fleet.cluster.api.get(f"/api/servers/{name}").json()["address"])


def _expiry(ident: tls.Identity) -> str:
    return format_time(validity(ident.cert_path.read_bytes())[1])


def _refusal(address: str, ident: tls.Identity) -> RelaySyncError:
    """How an agent's connection with `ident` to `address` ends: always an error of ours."""

    async def hello() -> None:
        framed = await tls.connect(address, tls.client_context(ident))
        try:
            with anyio.fail_after(TIMEOUT_S):
                await client_hello(framed, node_id=ident.node_id, name="stale")
        finally:
            framed.abort()

    with pytest.raises(RelaySyncError) as info:
        anyio.run(hello)
    return info.value


def _wait_logged(process: Process, *parts: str) -> None:
    def logged() -> bool:
        lines = process.log_tail(400).splitlines()
        return any(all(p in line for p in parts) for line in lines)

    wait_until(logged, timeout_s=TIMEOUT_S, what=f"{process.name} logging {parts}")


def test_an_agent_whose_certificate_expired_is_told_so_by_a_peer_and_by_the_master(
    fleet: Fleet, tmp_path: Path
) -> None:
    stale = expired_identity(fleet.cluster.master_dir / "ca", tmp_path / "stale", "stale-agent")
    date = _expiry(stale)
    ends = [
        (fleet.cluster.agents["t1"].process, _peer_address(fleet, "t1")),
        (fleet.cluster.master, _control_address(fleet)),
    ]
    for server, address in ends:
        assert server is not None
        error = _refusal(address, stale)
        assert isinstance(error, CertificateRefused), error
        assert address in str(error)
        assert f"expired on {date}" in str(error) and "--token" in str(error)
        _wait_logged(server, "'stale-agent'", f"expired on {date}", "connecting from", "--token")


def test_a_peer_whose_certificate_expired_is_refused_with_its_date(
    fleet: Fleet, tmp_path: Path
) -> None:
    """A fleet agent (src's real identity) connecting to a peer whose certificate ran out."""
    peer = expired_identity(fleet.cluster.master_dir / "ca", tmp_path / "peer", "old-peer")
    agent = tls.Identity.in_directory(fleet.cluster.agents["src"].data_dir / "identity")
    handled: list[FramedStream] = []

    async def handler(framed: FramedStream) -> None:
        handled.append(framed)

    async def connect() -> BaseException:
        async with anyio.create_task_group() as tg:
            port = await tg.start(tls.serve_tls, "127.0.0.1", 0, tls.server_context(peer), handler)
            with pytest.raises(RelaySyncError) as info, anyio.fail_after(TIMEOUT_S):
                await tls.connect(f"127.0.0.1:{port}", tls.client_context(agent))
            tg.cancel_scope.cancel()
        return info.value

    error = anyio.run(connect)
    assert isinstance(error, CertificateExpired), error
    assert "'old-peer'" in str(error) and f"expired on {_expiry(peer)}" in str(error)
    assert "joins the fleet again" in str(error)


def test_a_certificate_from_another_fleet_is_refused_on_both_ends(
    fleet: Fleet, tmp_path: Path
) -> None:
    now = dt.datetime.now(dt.UTC)
    stranger = dated_identity(
        tmp_path / "other-ca",  # another master's CA: the same name, another key
        tmp_path / "stranger",
        "stranger",
        not_before=now - dt.timedelta(days=1),
        not_after=now + dt.timedelta(days=100),
    )
    member = tls.Identity.in_directory(fleet.cluster.agents["src"].data_dir / "identity")
    pointed_here = trusting(stranger, member, tmp_path / "pointed-here")
    for server, address in [
        (fleet.cluster.agents["t1"].process, _peer_address(fleet, "t1")),
        (fleet.cluster.master, _control_address(fleet)),
    ]:
        assert server is not None
        error = _refusal(address, pointed_here)
        assert isinstance(error, LinkDown), error
        assert "may not accept this node's certificate" in str(error)
        _wait_logged(server, "connecting from", "not signed by this fleet's CA", "join token")
    # ...and a member of this fleet sent to the stranger's address
    error = _connect_to(stranger, member)
    assert isinstance(error, ForeignCertificate), error
    assert "not signed by this fleet's CA" in str(error) and "127.0.0.1:" in str(error)


def _connect_to(server: tls.Identity, client: tls.Identity) -> BaseException | None:
    async def handler(framed: FramedStream) -> None:
        await framed.aclose()

    async def connect() -> BaseException | None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(
                tls.serve_tls, "127.0.0.1", 0, tls.server_context(server), handler
            )
            try:
                with anyio.fail_after(TIMEOUT_S):
                    (await tls.connect(f"127.0.0.1:{port}", tls.client_context(client))).abort()
                return None
            except RelaySyncError as exc:
                return exc
            finally:
                tg.cancel_scope.cancel()

    return anyio.run(connect)


def test_an_agent_whose_certificate_expired_stops_at_start_saying_so(
    fleet: Fleet, tmp_path: Path
) -> None:
    data = fleet.cluster.base / "agents" / "stale"
    ident = expired_identity(fleet.cluster.master_dir / "ca", data / "identity", "stale")
    src_identity = fleet.cluster.agents["src"].data_dir / "identity"
    shutil.copy(src_identity / "master.json", data / "identity" / "master.json")
    agent = fleet.cluster.start_agent("stale", wait=False)
    wait_until(lambda: not agent.process.alive(), timeout_s=TIMEOUT_S, what="stale agent exits")
    assert agent.process.popen is not None and agent.process.popen.returncode == 12
    log = " ".join(agent.process.log_tail().split())  # the console wraps long lines
    assert f"expired on {_expiry(ident)}" in log, log
    assert str(data / "identity") in log and "--token" in log
    assert "Traceback" not in log


def test_a_certificate_that_expires_soon_is_warned_about_and_shown_to_operators(
    tmp_path: Path,
) -> None:
    """The master's control certificate (made before its first start) has 10 days left: its log
    warns at start, /metrics shows every node's days left, and a threshold rule alerts."""
    cluster = Cluster(
        tmp_path / "fleet",
        extra_env={"RELAYSYNC_MONITOR_INTERVAL_S": "0.3", "RELAYSYNC_METRICS_INTERVAL_S": "0.3"},
    )
    ca_dir = cluster.master_dir / "ca"
    CertificateAuthority.load_or_create(ca_dir)
    now = dt.datetime.now(dt.UTC)
    control = dated_identity(
        ca_dir,
        cluster.master_dir / "control",
        MASTER_NODE_NAME,
        not_before=now - dt.timedelta(days=1),
        not_after=now + dt.timedelta(days=10),
    )
    try:
        cluster.start_master()
        cluster.start_agent("a1")  # pins that control certificate, and works with it
        assert cluster.master is not None
        _wait_logged(cluster.master, "control server", f"expires on {_expiry(control)}", "in 10.0")

        def figures() -> dict | None:
            fams = metric_families(cluster.api.get("/metrics").text)
            mine = fams.get("relaysync_cert_expires_in_s", {}).get((("server", "a1"),))
            return fams if mine is not None else None

        fams = wait_until(figures, timeout_s=TIMEOUT_S, what="certificate figures on /metrics")
        master_left = fams["relaysync_master_cert_expires_in_s"][(("server", "master"),)]
        assert 9 * DAY_S < master_left <= 10 * DAY_S
        assert fams["relaysync_cert_expires_in_s"][(("server", "a1"),)] > 800 * DAY_S
        # the fleet's certificates at a glance: what a1's control link showed the master
        a1_cert = tls.Identity.in_directory(cluster.agents["a1"].data_dir / "identity").cert_path
        a1 = cluster.api.get("/api/servers/a1").json()
        assert a1["cert_not_after"] == validity(a1_cert.read_bytes())[1].timestamp()
        assert 800 * DAY_S < a1["cert_expires_in_s"] <= 825 * DAY_S
        rule = cluster.api.post(
            "/api/thresholds",
            json={
                "scope": "server",
                "target": "master",
                "metric": "cert_expires_in_s",
                "operator": "<",
                "value": 30 * DAY_S,
            },
        ).json()

        def firing() -> bool:
            alerts = cluster.api.get("/api/alerts", params={"limit": 100}).json()
            return any(a["key"] == f"threshold:{rule['id']}:master" for a in alerts)

        wait_until(firing, timeout_s=TIMEOUT_S, what="the certificate alert firing")
    finally:
        cluster.stop()
