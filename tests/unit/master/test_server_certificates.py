"""The master's word on each server's certificate: its log warns, at each control link, about a
node whose certificate expires within a month (the node id is the certificate's hash, so the node
must join again), and GET /api/servers shows the seconds left."""

from __future__ import annotations

import logging
import time

import pytest

from relaysync.auth.validity import EXPIRY_WARNING_S
from relaysync.master._control_trust import warn_if_expiring
from relaysync.master.api.servers import ServerOut
from relaysync.master.store.types import ServerInfo

DAY_S = 86400


def _server(cert_not_after: float | None) -> ServerInfo:
    return ServerInfo(
        node_id="a" * 64,
        name="web-1",
        region="",
        group="",
        address="",
        state="up",
        last_seen=None,
        capacity_weight=1,
        created_at=0.0,
        cert_not_after=cert_not_after,
    )


@pytest.mark.parametrize(
    ("left_s", "warned"),
    [(None, False), (EXPIRY_WARNING_S + DAY_S, False), (10 * DAY_S, True), (-DAY_S, True)],
)
def test_a_server_whose_certificate_expires_within_a_month_is_warned_about(
    caplog: pytest.LogCaptureFixture, left_s: float | None, warned: bool
) -> None:
    caplog.set_level(logging.WARNING, logger="relaysync.master.control")
    warn_if_expiring(_server(None if left_s is None else time.time() + left_s))
    assert ("server web-1: its certificate expire" in caplog.text) is warned
    if warned:
        assert "--token" in caplog.text  # the remedy: join again


def test_the_api_shows_the_seconds_left_on_each_certificate() -> None:
    soon = ServerOut.model_validate(_server(time.time() + 10 * DAY_S)).model_dump()
    assert 10 * DAY_S - 5 <= soon["cert_expires_in_s"] <= 10 * DAY_S
    unknown = ServerOut.model_validate(_server(None)).model_dump()
    assert unknown["cert_not_after"] is None and unknown["cert_expires_in_s"] is None
