"""An early figures report that replaces a regular one still waiting for the control link goes as
regular: the master measures an agent's allowed silence between regular reports only, and the
replaced regular report must not leave that cycle without one (found in review: the gap measured,
so the no-data limit, doubled for one cycle). The real MasterLink, against a master by hand."""

from __future__ import annotations

import time

import anyio
from tests._fleet import Fleet
from tests.component.agent.test_report_acks import _running, _Session

from relaysync.agent.master_link import MasterLink
from relaysync.constants import CAPABILITIES
from relaysync.monitor.observations import ReportClock
from relaysync.protocol.messages import MetricsReport

TIMEOUT_S = 10
INTERVAL_S = 30.0


async def _connected(link: MasterLink) -> None:
    with anyio.fail_after(TIMEOUT_S):
        while not link.connected:
            await anyio.sleep(0.01)


async def _figures(session: _Session) -> MetricsReport:
    with anyio.fail_after(TIMEOUT_S):
        while not isinstance(message := await session.messages.receive(), MetricsReport):
            pass
    return message


def _report(at: float, *, early: bool) -> MetricsReport:
    return MetricsReport(at=at, samples=(), early=early)


def test_an_early_report_replacing_a_waiting_regular_one_keeps_its_slot(fleet: Fleet) -> None:
    clock = ReportClock()

    async def main() -> None:
        async with _running(fleet, CAPABILITIES) as (link, master):
            session = await master.session()
            await _connected(link)
            link.send_metrics(_report(time.time(), early=False))
            got = await _figures(session)
            clock.reported("web-1", 0.0, (), early=got.early)
            # One cycle later the regular report waits (the write loop is busy) when a source
            # failure sends one early: no checkpoint between the two, so the early one replaces it.
            link.send_metrics(_report(time.time(), early=False))
            link.send_metrics(_report(time.time(), early=True))
            got = await _figures(session)
            assert not got.early
            clock.reported("web-1", INTERVAL_S, (), early=got.early)
            # An early one with nothing waiting stays early; a regular one replacing it is regular.
            link.send_metrics(_report(time.time(), early=True))
            assert (await _figures(session)).early
            link.send_metrics(_report(time.time(), early=True))
            link.send_metrics(_report(time.time(), early=False))
            assert not (await _figures(session)).early

    anyio.run(main)
    # the gap the master measured is the agent's interval, not two of them
    assert clock.limit_s("web-1", 1.0) == ReportClock().limit_s("web-1", INTERVAL_S)
