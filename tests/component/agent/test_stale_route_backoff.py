"""A route change that never settles (the target answers ROUTES_STALE for ever: it refuses a
revoked source's mapping, its assignment was lost) is asked ever more seldom and logged
sparingly, real sockets: one INFO line, the failed hop reported to the master past
ROUTES_STALE_LIMIT_S, then a backoff to ROUTES_STALE_BACKOFF_MAX_S and one warning, repeated with
a count at most every ROUTES_STALE_LOG_INTERVAL_S. The first retries stay short, so a change
that settles gets through at once (test_plain_link_routes.py).

Found in review: the sender retried every 2 s for a minute, then every 10 s for ever, each a
log line on both sides (a revoked source: thousands a day per target)."""

from __future__ import annotations

import logging
import time
from pathlib import Path

import pytest
from tests.component.agent._pair import peer_server, plain_link, serve_link_until, source_mapping

from relaysync.constants import RECONNECT_MIN_S, ROUTES_STALE_RETRY_MAX_S
from relaysync.errors import RoutesStale
from relaysync.protocol.framing import FramedStream
from relaysync.protocol.messages import MappingState
from relaysync.transfer import _stale_routes
from relaysync.transfer.sender import TargetLink

LIMIT_S = 0.5  # ROUTES_STALE_LIMIT_S, scaled down
CAP_S = 1.0  # ROUTES_STALE_BACKOFF_MAX_S, scaled down
WAIT_S = 60.0  # loopback, but the machine is shared


class _Timed(TargetLink):
    """The link, noting when each of its sessions opens."""

    opened_at: list[float]

    async def _open(self) -> tuple[FramedStream, MappingState]:
        self.opened_at.append(time.monotonic())
        return await super()._open()


def _refusals(tmp: Path, *, reports: int) -> tuple[list[float], list[float]]:
    """Run a link to a target that has no such mapping until it reported `reports` failed hops;
    the times its sessions opened (each refused) and of the reports."""
    refused_at: list[float] = []
    reported_at: list[float] = []
    _Timed.opened_at = refused_at
    serve_link_until(
        lambda port: plain_link(
            source_mapping(tmp),
            port,
            cls=_Timed,
            route_epoch=lambda: 2_000,  # the target runs none: "not ours yet"
            on_failure=lambda node, err, count: reported_at.append(time.monotonic()),
        ),
        lambda: len(reported_at) >= reports,
        to=peer_server(None),
        timeout_s=WAIT_S,
    )
    return refused_at, reported_at


def _lines(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == level and text in r.getMessage()]


@pytest.fixture(autouse=True)
def _scaled(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    monkeypatch.setattr(_stale_routes, "ROUTES_STALE_LIMIT_S", LIMIT_S)
    monkeypatch.setattr(_stale_routes, "ROUTES_STALE_BACKOFF_MAX_S", CAP_S)
    caplog.set_level(logging.DEBUG, logger="relaysync")


def test_refusals_that_never_settle_back_off_to_the_cap_and_log_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    refused_at, reported_at = _refusals(tmp_path, reports=6)
    assert reported_at[0] - refused_at[0] >= LIMIT_S  # a failed hop past the limit, not before
    settling = [
        b - a for a, b in zip(refused_at, refused_at[1:], strict=False) if b < reported_at[0]
    ]
    assert settling and max(settling) <= ROUTES_STALE_RETRY_MAX_S + 0.5, settling  # short at first
    gaps = [b - a for a, b in zip(reported_at, reported_at[1:], strict=False)]
    assert min(gaps[-2:]) >= 0.9 * CAP_S, gaps  # then ever more seldom, up to the cap
    assert max(gaps) <= CAP_S + 1.0, gaps  # (+ 1 s: the machine is shared)
    assert len(_lines(caplog, logging.INFO, "waits for the routes to settle")) == 1
    warned = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warned) == 1 and "reported as a failed hop" in warned[0].getMessage(), [
        r.getMessage() for r in warned
    ]


def test_refusals_that_go_on_are_logged_again_with_their_count(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(_stale_routes, "ROUTES_STALE_LOG_INTERVAL_S", 2.5 * CAP_S)
    refused_at, reported_at = _refusals(tmp_path, reports=8)
    again = _lines(caplog, logging.WARNING, "still refused")
    assert again and all(" times in the last " in line for line in again), again
    counts = [int(line.split("still refused: ")[1].split(" ")[0]) for line in again]
    assert min(counts) >= 2, again  # the refusals between two lines are counted, not logged
    elapsed_s = reported_at[-1] - reported_at[0]
    assert len(again) <= 1 + elapsed_s / (2.5 * CAP_S), (again, elapsed_s)


def test_the_first_retries_of_a_mapping_not_ours_yet_are_quick_then_double() -> None:
    """A new mapping's source may dial a target whose assignment is a few ms behind its own:
    the first retry is 20 ms away (not a lost link's 0.2 s), the next ones double up to
    ROUTES_STALE_RETRY_MAX_S while the change may settle (the backoff's cap, if lower), and a
    taken session starts afresh."""
    stale = _stale_routes.StaleRoutes(
        logging.LoggerAdapter(logging.getLogger("relaysync.test"), {}), "t1"
    )
    err = RuntimeError("not ours yet")
    delays = [stale.refused(err, now=float(i) / 100) for i in range(9)]
    # (the autouse fixture scales the backoff's cap down to CAP_S, below the 2 s of settling)
    assert delays == pytest.approx([0.02, 0.04, 0.08, 0.16, 0.32, 0.64, CAP_S, CAP_S, CAP_S])
    stale.settled()
    assert stale.refused(err, now=1.0) == 0.02


def test_a_lost_link_after_quick_route_retries_still_waits_a_lost_links_first_wait(
    tmp_path: Path,
) -> None:
    """Found in review: a real failure that follows route-change refusals, while earlier
    failures are not yet cleared, took the refusals' 20-40 ms wait as its own."""
    link = plain_link(source_mapping(tmp_path), 1)
    link.failures = 2  # earlier real failures, not cleared by a session that made progress
    delay = link._routes_stale(RoutesStale(1, "not ours yet"))
    assert delay == pytest.approx(0.02)
    assert link._session_failed(ConnectionRefusedError(111, "refused"), delay) == RECONNECT_MIN_S
