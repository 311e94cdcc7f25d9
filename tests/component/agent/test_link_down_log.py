"""A target down for long (nothing listens at its address) makes its source's link log each of
its first failed sessions, then one line with their count at most every LINK_DOWN_LOG_INTERVAL_S,
not one a retry (real sockets; the limits scaled down).

Found in review: a link retried every RECONNECT_MAX_S (10 s) for as long as the target was down,
each a warning: 8,640 lines a day per link."""

from __future__ import annotations

import logging
import socket
from pathlib import Path

import pytest
from tests.component.agent._pair import plain_link, serve_link_until, source_mapping

from relaysync.transfer import sender

WARNINGS = 3  # LINK_DOWN_WARNINGS, scaled down
INTERVAL_S = 0.6  # LINK_DOWN_LOG_INTERVAL_S, scaled down
FAILURES = 40  # sessions failed in a row, every RETRY_S at most
RETRY_S = 0.05  # RECONNECT_MAX_S, scaled down
WAIT_S = 60.0  # loopback, but the machine is shared


def _closed_port() -> int:
    """A port on 127.0.0.1 nothing listens at (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_a_target_down_for_long_is_logged_with_a_count_not_at_every_retry(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(sender, "LINK_DOWN_WARNINGS", WARNINGS)
    monkeypatch.setattr(sender, "LINK_DOWN_LOG_INTERVAL_S", INTERVAL_S)
    monkeypatch.setattr(sender, "RECONNECT_MAX_S", RETRY_S)
    caplog.set_level(logging.DEBUG, logger="relaysync")
    failed: list[int] = []
    serve_link_until(
        lambda port: plain_link(
            source_mapping(tmp_path),
            port,
            on_failure=lambda node, err, count: failed.append(count),
        ),
        lambda: len(failed) >= FAILURES,
        to=_closed_port(),
        timeout_s=WAIT_S,
    )
    warnings = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "link to t " in r.getMessage()
    ]
    assert len(warnings) >= WARNINGS + 1, warnings  # the first ones, then at least a count
    assert all("down, will retry" in w for w in warnings[:WARNINGS]), warnings
    counted = warnings[WARNINGS:]
    assert counted and all("still down" in w for w in counted), warnings
    assert len(warnings) < FAILURES / 2, len(warnings)  # not one a retry
    assert failed == list(range(1, FAILURES + 1))[: len(failed)]  # every one still reported
