"""Certificate validity: the refusal names the date and the remedy; a warning comes a month ahead,
at start and again each interval, and an error once the certificate has expired."""

from __future__ import annotations

import datetime as dt
import logging
from functools import partial
from pathlib import Path

import anyio
import pytest

from relaysync.auth.validity import (
    EXPIRY_WARNING_S,
    check_current,
    log_expiry,
    seconds_left,
    watch_expiry,
)
from relaysync.errors import CertificateExpired, CertificateNotYetValid
from tests._certs import dated_identity

NOW = dt.datetime.now(dt.UTC)


def _cert(tmp_path: Path, *, days_left: float, not_before_days: float = -30) -> bytes:
    ident = dated_identity(
        tmp_path / "ca",
        tmp_path / "node",
        "web-1",
        not_before=NOW + dt.timedelta(days=not_before_days),
        not_after=NOW + dt.timedelta(days=days_left),
    )
    return ident.cert_path.read_bytes()


def test_an_expired_certificate_is_refused_naming_whose_when_and_what_to_do(
    tmp_path: Path,
) -> None:
    cert = _cert(tmp_path, days_left=-2)
    with pytest.raises(CertificateExpired) as info:
        check_current(cert, "node 'web-1' at 10.0.0.5:4100", "join again")
    expected_day = (NOW - dt.timedelta(days=2)).strftime("%Y-%m-%d")
    assert str(info.value).startswith("The certificate of node 'web-1' at 10.0.0.5:4100 expired")
    assert f"expired on {expected_day} " in str(info.value) and "UTC: join again." in str(
        info.value
    )
    assert seconds_left(cert) < -86400


def test_a_certificate_from_the_future_names_the_clock(tmp_path: Path) -> None:
    cert = _cert(tmp_path, days_left=30, not_before_days=1)
    with pytest.raises(CertificateNotYetValid, match="not valid before .* check the clocks"):
        check_current(cert, "this agent", "join again")


def test_a_current_certificate_passes(tmp_path: Path) -> None:
    check_current(_cert(tmp_path, days_left=1), "this agent", "join again")


@pytest.mark.parametrize(
    ("days_left", "level", "text"),
    [
        (100, None, ""),
        (10, logging.WARNING, "expires on"),
        (-1, logging.ERROR, "expired on"),
    ],
)
def test_expiry_is_warned_a_month_ahead_and_an_error_once_past(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, days_left: int, level: int | None, text: str
) -> None:
    with caplog.at_level(logging.INFO, logger="relaysync.auth.validity"):
        log_expiry(
            _cert(tmp_path, days_left=days_left),
            "this agent",
            "join again",
            warn_within_s=EXPIRY_WARNING_S,
        )
    records = [r for r in caplog.records if r.name == "relaysync.auth.validity"]
    if level is None:
        assert records == []
        return
    assert [r.levelno for r in records] == [level]
    assert text in records[0].getMessage() and "join again" in records[0].getMessage()


def test_the_watch_warns_at_start_and_again_each_interval(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _cert(tmp_path, days_left=10)
    cert_path = tmp_path / "node" / "node.pem"

    def warnings() -> int:
        return sum("in 10.0 days" in r.getMessage() for r in caplog.records)

    async def watch() -> None:
        async with anyio.create_task_group() as tg:
            watcher = partial(watch_expiry, interval_s=0.05)
            await tg.start(watcher, cert_path, "this agent", "join again")
            with anyio.fail_after(10):
                while warnings() < 3:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    with caplog.at_level(logging.WARNING, logger="relaysync.auth.validity"):
        anyio.run(watch)
    assert warnings() >= 3
