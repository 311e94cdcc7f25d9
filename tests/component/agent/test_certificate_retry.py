"""How soon an agent whose certificate the master refused asks again: a certificate not yet
valid (a clock behind, which NTP sets right) soon; one expired by the agent's own clock too
(only a new certificate helps) seldom. The master is the real control server, checking the
dates of certificates made with chosen dates by the fleet's CA."""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path

import anyio
import pytest
from tests._certs import dated_identity, expired_identity
from tests._fleet import Fleet

from relaysync._util.aio import leaf_error
from relaysync.agent.master_link import MasterLink
from relaysync.constants import CERT_CLOCK_RETRY_S, RECONNECT_MIN_S, REFUSED_RETRY_S
from relaysync.errors import CertificateNotYetValid, CertificateRefused
from relaysync.protocol.framing import FramedStream
from relaysync.protocol.messages import Error, ErrorCode, Register
from relaysync.transfer import tls

SESSION_TIMEOUT_S = 20.0


def _link(port: int, ident: tls.Identity) -> MasterLink:
    async def on_assignment(_assignment: object) -> None:
        pass

    return MasterLink(
        control_address=f"127.0.0.1:{port}",
        ctx=tls.client_context(ident),
        master_node_id=None,
        node_id=ident.node_id,
        name="web-1",
        register=Register(name="web-1", region="", group="", peer_address="127.0.0.1:9"),
        on_assignment=on_assignment,
        certificate=ident.cert_path.read_bytes(),
    )


async def _refused_session(link: MasterLink) -> float | None:
    """One control session, which the master refuses: the wait the link then chooses."""
    with anyio.fail_after(SESSION_TIMEOUT_S), pytest.raises(Exception) as ended:
        await link._session()
    err = leaf_error(ended.value)
    assert isinstance(err, CertificateRefused), err
    return link._log_failure(err, RECONNECT_MIN_S)


def _against_master(fleet: Fleet, ident: tls.Identity) -> float | None:
    async def main() -> float | None:
        async with fleet.control_server() as (_control, port):
            return await _refused_session(_link(port, ident))

    return anyio.run(main)


def test_a_certificate_not_yet_valid_is_asked_again_soon(
    fleet: Fleet, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Issued by a CA whose clock ran ahead (or checked by a master whose clock is behind):
    once the clock is right, the agent is back within CERT_CLOCK_RETRY_S, not 5 minutes."""
    now = dt.datetime.now(dt.UTC)
    early = dated_identity(
        fleet.tmp / "ca",
        tmp_path / "early",
        "web-1",
        not_before=now + dt.timedelta(hours=1),
        not_after=now + dt.timedelta(days=30),
    )
    caplog.set_level(logging.ERROR, logger="relaysync.agent.master_link")
    assert _against_master(fleet, early) == CERT_CLOCK_RETRY_S
    assert "not valid before" in caplog.text
    assert f"asking again in {CERT_CLOCK_RETRY_S:.0f} s" in caplog.text


def test_a_certificate_current_here_but_refused_by_the_master_is_asked_again_soon(
    fleet: Fleet,
) -> None:
    """The master's clock is behind our certificate's not-before date (a master put back in
    time): our own clock holds it current, so the master's clock is what NTP will set right."""
    ident = fleet.join("web-1")

    async def clock_behind_master(framed: FramedStream) -> None:
        refusal = CertificateNotYetValid("node 'web-1'", "2099-01-01 00:00:00 UTC")
        await framed.send(Error(code=ErrorCode.CERT_REFUSED, detail=str(refusal)))

    async def main() -> float | None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(
                tls.serve_tls, "127.0.0.1", 0, tls.server_context(fleet.master), clock_behind_master
            )
            wait_s = await _refused_session(_link(port, ident))
            tg.cancel_scope.cancel()
            return wait_s

    assert anyio.run(main) == CERT_CLOCK_RETRY_S


def test_a_certificate_expired_by_our_clock_too_is_asked_again_seldom(
    fleet: Fleet, tmp_path: Path
) -> None:
    """Only a new certificate (a rejoin) helps: asking every 30 s would only fill the logs."""
    stale = expired_identity(fleet.tmp / "ca", tmp_path / "stale", "web-1")
    assert _against_master(fleet, stale) == REFUSED_RETRY_S
