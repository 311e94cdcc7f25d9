"""The agent's collector: a failure to build one report (a bug in a figure, an odd /proc) costs
that report only; reports asked for go early but never within EARLY_REPORT_GAP_S of the last one,
and the regular ones keep their times.

The collector runs on a virtual clock (tests/_virtual_time.py): each report is stamped with the
loop's time when it went, and the test moves the time, so gaps and deadlines are checked exactly
and a busy host (CI's, with the whole suite running) cannot move them."""

from __future__ import annotations

import threading
from functools import partial
from typing import Any

import anyio
import pytest

from relaysync.constants import EARLY_REPORT_GAP_S
from relaysync.monitor import collectors
from relaysync.monitor.collectors import Collector, sample
from relaysync.protocol.messages import MetricSample, MetricsReport
from tests._virtual_time import WAIT_S, VirtualTimeLoop, until, virtual_loop

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> tuple[str, dict[str, object]]:
    return "asyncio", {"loop_factory": VirtualTimeLoop}


def _serve(collector: Collector, sent: list[tuple[float, bool]], interval_s: float) -> partial[Any]:
    """`collector.serve`, noting when each report went (on the loop's clock) and if it was early."""
    loop = virtual_loop()

    def send(report: MetricsReport) -> None:
        sent.append((loop.time(), report.early))

    return partial(collector.serve, send, interval_s=interval_s)


async def test_a_report_that_fails_to_build_is_skipped_and_the_next_one_goes(tmp_path) -> None:
    calls = 0

    def own() -> list[MetricSample]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("a bug in one figure")
        return [sample("links_total", 1)]

    loop = virtual_loop()
    sent: list[MetricsReport] = []
    collector = Collector(folders=lambda: [str(tmp_path)], own=own)
    async with anyio.create_task_group() as tg:
        await tg.start(partial(collector.serve, sent.append, interval_s=10.0))
        await until(lambda: calls == 1, "the first collection")
        loop.advance_to(10.0)  # the next regular report
        await until(lambda: sent, "a report")
        tg.cancel_scope.cancel()
    assert calls == 2
    assert any(s.name == "links_total" for s in sent[0].samples)


async def test_report_soon_sends_the_next_report_early_but_never_within_the_gap(tmp_path) -> None:
    """A source that begins or stops failing is told at once, not at the next interval (10 s by
    default); reports asked for again and again still go EARLY_REPORT_GAP_S apart."""
    assert EARLY_REPORT_GAP_S == 1.0  # the times below
    loop = virtual_loop()
    sent: list[tuple[float, bool]] = []
    collector = Collector(folders=lambda: [str(tmp_path)], own=list)
    async with anyio.create_task_group() as tg:
        await tg.start(_serve(collector, sent, interval_s=3600))
        await until(lambda: sent, "the first report")
        for eighth in range(1, 25):  # a flapping source asks for a report every 1/8 s for 3 s
            assert loop.next_deadline() == sent[-1][0] + EARLY_REPORT_GAP_S, sent
            collector.report_soon()
            loop.advance_to(eighth / 8)
            if eighth % 8:  # within the gap: the collector may run, and must not report
                await anyio.lowlevel.checkpoint()
            else:  # the gap after the last report has passed: the next one goes now
                await until(lambda n=1 + eighth // 8: len(sent) == n, "an early report")
        tg.cancel_scope.cancel()
    assert sent == [(0.0, False), (1.0, True), (2.0, True), (3.0, True)]


async def test_a_slow_collection_does_not_shorten_the_gap_to_the_next_report(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gap ran from when a report's collection began: one that took most of the gap (a busy
    host) was followed by the next asked-for report a moment after it went (0.38 s apart in a
    fresh-clone CI run)."""
    loop = virtual_loop()
    real = collectors.collect_system
    calls, slow_done = 0, threading.Event()

    def slow_first(folders: list[str]) -> list[MetricSample]:
        nonlocal calls
        calls += 1
        if calls == 1:  # until the test has moved the clock on
            assert slow_done.wait(WAIT_S)
        return real(folders)

    monkeypatch.setattr(collectors, "collect_system", slow_first)
    sent: list[tuple[float, bool]] = []
    collector = Collector(folders=lambda: [str(tmp_path)], own=list)
    async with anyio.create_task_group() as tg:
        await tg.start(_serve(collector, sent, interval_s=3600))
        await until(lambda: calls == 1, "the first collection")
        collector.report_soon()  # asked for while the first is being collected
        loop.advance_to(0.75)  # the collection takes 0.75 s
        slow_done.set()
        await until(lambda: sent, "the first report")
        assert sent == [(0.75, False)]
        assert loop.next_deadline() == 0.75 + EARLY_REPORT_GAP_S  # from when the report went
        loop.advance_to(0.75 + EARLY_REPORT_GAP_S)
        await until(lambda: len(sent) == 2, "the report asked for")
        tg.cancel_scope.cancel()
    assert sent == [(0.75, False), (0.75 + EARLY_REPORT_GAP_S, True)]


async def test_an_early_report_is_marked_and_leaves_the_regular_ones_on_their_times(
    tmp_path,
) -> None:
    """The regular reports' gap is what the master allows an agent's silence (3 of them): an
    early report counted from moved the regular ones, and unmarked it shortened that gap."""
    loop = virtual_loop()
    sent: list[tuple[float, bool]] = []
    collector = Collector(folders=lambda: [str(tmp_path)], own=list)
    async with anyio.create_task_group() as tg:
        await tg.start(_serve(collector, sent, interval_s=3.0))
        await until(lambda: sent, "the first report")
        loop.advance_to(1.25)  # past the minimum gap: the early one goes at once
        collector.report_soon()
        await until(lambda: len(sent) == 2, "the early report")
        loop.advance_to(1.25 + EARLY_REPORT_GAP_S)  # the gap after it ends ...
        await until(lambda: loop.next_deadline() is not None, "the wait for the regular report")
        assert loop.next_deadline() == 3.0  # ... and the regular one is due 3 s after the first
        loop.advance_to(3.0)
        await until(lambda: len(sent) == 3, "the regular report")
        tg.cancel_scope.cancel()
    assert sent == [(0.0, False), (1.25, True), (3.0, False)]
