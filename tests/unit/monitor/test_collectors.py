"""The agent's collector: a failure to build one report (a bug in a figure, an odd /proc) costs
that report only; the agent's monitoring, and the agent with it, go on."""

from __future__ import annotations

import time

import anyio
import pytest

from relaysync.constants import EARLY_REPORT_GAP_S
from relaysync.monitor import collectors
from relaysync.monitor.collectors import Collector, sample
from relaysync.protocol.messages import MetricSample, MetricsReport

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


async def test_a_report_that_fails_to_build_is_skipped_and_the_next_one_goes(tmp_path) -> None:
    calls = 0

    def own() -> list[MetricSample]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ValueError("a bug in one figure")
        return [sample("links_total", 1)]

    sent: list[MetricsReport] = []
    collector = Collector(folders=lambda: [str(tmp_path)], own=own)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            await tg.start(
                lambda task_status: collector.serve(
                    sent.append, interval_s=0.01, task_status=task_status
                )
            )
            while not sent:
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    assert calls >= 2
    assert any(s.name == "links_total" for s in sent[0].samples)


async def test_report_soon_sends_the_next_report_early_but_never_within_the_gap(tmp_path) -> None:
    """A source that begins or stops failing is told at once, not at the next interval (10 s by
    default); reports asked for again and again still go EARLY_REPORT_GAP_S apart at most."""
    sent: list[float] = []
    collector = Collector(folders=lambda: [str(tmp_path)], own=list)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            await tg.start(
                lambda task_status: collector.serve(
                    lambda r: sent.append(anyio.current_time()),
                    interval_s=3600,
                    task_status=task_status,
                )
            )
            while not sent:
                await anyio.sleep(0.01)
            for _ in range(20):  # a flapping source asks for one report after another
                collector.report_soon()
                await anyio.sleep(0.1)
            while len(sent) < 3:
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    gaps = [b - a for a, b in zip(sent, sent[1:], strict=False)]
    assert all(g >= EARLY_REPORT_GAP_S * 0.9 for g in gaps), gaps
    assert len(sent) <= 4, gaps  # about 2 s of asking: not 20 reports


async def test_a_slow_collection_does_not_shorten_the_gap_to_the_next_report(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The gap ran from when a report's collection began: one that took most of the gap (a busy
    host) was followed by the next asked-for report a moment after it went."""
    real = collectors.collect_system
    calls = 0

    def slow_first(folders: list[str]) -> list[MetricSample]:
        nonlocal calls
        calls += 1
        if calls == 1:
            time.sleep(EARLY_REPORT_GAP_S * 0.8)
        return real(folders)

    monkeypatch.setattr(collectors, "collect_system", slow_first)
    sent: list[float] = []
    collector = Collector(folders=lambda: [str(tmp_path)], own=list)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            await tg.start(
                lambda task_status: collector.serve(
                    lambda r: sent.append(anyio.current_time()),
                    interval_s=3600,
                    task_status=task_status,
                )
            )
            collector.report_soon()  # asked for while the first is being collected
            while len(sent) < 2:
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    assert sent[1] - sent[0] >= EARLY_REPORT_GAP_S * 0.99, sent


async def test_an_early_report_is_marked_and_leaves_the_regular_ones_on_their_times(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The regular reports' gap is what the master allows an agent's silence (3 of them): an
    early report counted from moved the regular ones, and unmarked it shortened that gap. (The
    host's figures are not collected: on a busy host their time varied by a second, which the
    bounds below cannot tell from a regular report moved by the early one.)"""
    monkeypatch.setattr(collectors, "collect_system", lambda folders: [])
    sent: list[tuple[float, bool]] = []
    collector = Collector(folders=lambda: [str(tmp_path)], own=list)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            await tg.start(
                lambda task_status: collector.serve(
                    lambda r: sent.append((anyio.current_time(), r.early)),
                    interval_s=3.0,
                    task_status=task_status,
                )
            )
            while not sent:
                await anyio.sleep(0.01)
            await anyio.sleep(1.2)  # past the minimum gap: the early one goes at once
            collector.report_soon()
            while len(sent) < 3:
                await anyio.sleep(0.01)
            tg.cancel_scope.cancel()
    (first, first_early), (_, second_early), (third, third_early) = sent[:3]
    assert (first_early, second_early, third_early) == (False, True, False)
    assert 2.7 <= third - first <= 3.6  # the regular one kept its time, not 3 s after the early
