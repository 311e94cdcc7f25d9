"""Agents' figures, through the real control server, in the master's Prometheus /metrics: an agent
speaks for itself only, and no figure of one agent can break the exposition for the others."""

from __future__ import annotations

import logging
import time

import anyio
import pytest
from prometheus_client.parser import text_string_to_metric_families
from tests._fleet import TIMEOUT_S, Fleet, agent_link

from relaysync.master.control import MAX_REFUSED_FIGURES_LOGGED
from relaysync.monitor.engine import MonitorService
from relaysync.monitor.types import MASTER_SERVER
from relaysync.protocol.framing import FramedStream
from relaysync.protocol.messages import MetricSample, MetricsReport, Ping, Pong


@pytest.fixture
def monitor(fleet: Fleet) -> MonitorService:
    service = MonitorService(
        store=fleet.store, publish=lambda kind, data: None, links_up=set, self_figures=list
    )
    fleet.client.app.state.monitor = service  # type: ignore[attr-defined]
    return service


def _report(*samples: MetricSample) -> MetricsReport:
    return MetricsReport(at=time.time(), samples=samples)


def _send(fleet: Fleet, monitor: MonitorService, sent: dict[str, MetricsReport]) -> set[str]:
    """Each agent (joined) sends its report; returns the agents whose link took it."""
    idents = {name: fleet.join(name) for name in sent}
    took: set[str] = set()

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            control.on_metrics = monitor.on_metrics
            for name, report in sent.items():
                async with agent_link(port, idents[name], name) as framed:
                    await framed.send(report)
                    if await _answers(framed):
                        took.add(name)

    anyio.run(main)
    return took


async def _answers(framed: FramedStream) -> bool:
    """Whether the link still answers a Ping after the report (the master took it)."""
    try:
        with anyio.fail_after(TIMEOUT_S):
            await framed.send(Ping(nonce=1))
            while not isinstance(await framed.receive(), Pong):
                pass
    except (anyio.EndOfStream, anyio.BrokenResourceError):
        return False
    return True


def _series(fleet: Fleet) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = fleet.client.get("/metrics").text
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
    }


def test_an_agents_server_label_never_replaces_its_own(
    fleet: Fleet, monitor: MonitorService
) -> None:
    """Was: agent web-a sending server=web-b appeared as relaysync_cpu_percent{server="web-b"}."""
    forged = MetricSample(name="cpu_percent", value=99.0, labels=(("server", "web-b"),))
    both = MetricSample(name="load1", value=2.0, labels=(("exported_server", "x"), ("server", "y")))
    took = _send(fleet, monitor, {"web-a": _report(forged, both)})
    assert took == {"web-a"}
    series = _series(fleet)
    assert series[("relaysync_cpu_percent", (("exported_server", "web-b"), ("server", "web-a")))]
    assert not [k for k in series if ("server", "web-b") in k[1]]
    assert series[
        (
            "relaysync_load1",
            (("exported_exported_server", "y"), ("exported_server", "x"), ("server", "web-a")),
        )
    ]


@pytest.mark.parametrize(
    "sample",
    [
        MetricSample(name="cpü_percent", value=1.0),  # "relaysync_cp__percent" after rewriting
        MetricSample(name="cpu-percent", value=1.0),
        MetricSample(name="cpu_percent", value=1.0, labels=(("", "x"),)),  # `{="x"}`: invalid
        MetricSample(name="cpu_percent", value=1.0, labels=(("pa th", "x"),)),
        MetricSample(name="cpu_percent", value=1.0, labels=(("pâth", "x"),)),
        MetricSample(name="cpu_percent", value=1.0, labels=(("1path", "x"),)),
        MetricSample(name="cpu_percent", value=1.0, labels=(("__name__", "x"),)),  # reserved
        MetricSample(name="disk_used_percent", value=1.0, labels=(("path", "/x" * 3000),)),
    ],
    ids=[
        "non-ascii",
        "dash",
        "empty-label",
        "space-label",
        "non-ascii-label",
        "digit-label",
        "__",
        "long-label-value",
    ],
)
def test_a_name_prometheus_would_rewrite_or_refuse_is_left_out_and_the_link_stays(
    fleet: Fleet, monitor: MonitorService, sample: MetricSample, caplog: pytest.LogCaptureFixture
) -> None:
    """Was: `isalnum()` took non-ASCII letters, which Prometheus's client rewrites to `_` (so
    cpü_percent and cp__percent became one series), and label names were not checked at all: an
    empty one made the whole exposition unparsable, for every agent. Then such a name ended the
    agent's control link, again at every report: one figure cost the agent its assignments."""
    caplog.set_level(logging.WARNING, logger="relaysync.master.control")
    good = MetricSample(name="load1", value=3.0)
    took = _send(
        fleet,
        monitor,
        {
            "web-a": _report(sample, good),
            "web-b": _report(MetricSample(name="cp__percent", value=2.0)),
        },
    )
    assert took == {"web-a", "web-b"}
    assert _series(fleet) == {
        ("relaysync_cp__percent", (("server", "web-b"),)): 2.0,
        ("relaysync_load1", (("server", "web-a"),)): 3.0,
        ("relaysync_server_up", (("server", "web-a"),)): 0.0,
        ("relaysync_server_up", (("server", "web-b"),)): 0.0,
        ("relaysync_server_healthy", (("server", "web-a"),)): 1.0,
        ("relaysync_server_healthy", (("server", "web-b"),)): 1.0,
        ("relaysync_alerts_open", ()): 0.0,
    }
    warned = [r.getMessage() for r in caplog.records if "left out of /metrics" in r.getMessage()]
    assert len(warned) == 1 and "agent web-a:" in warned[0], warned


def test_a_refused_figure_is_logged_once_per_link_and_at_most_a_bounded_number_of_times(
    fleet: Fleet, monitor: MonitorService, caplog: pytest.LogCaptureFixture
) -> None:
    """An agent repeating a bad figure every report, or sending thousands of distinct bad
    names, writes a bounded number of warnings."""
    caplog.set_level(logging.WARNING, logger="relaysync.master.control")
    many = _report(*(MetricSample(name=f"bad-{i}", value=1.0) for i in range(500)))
    ident = fleet.join("web-a")

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            control.on_metrics = monitor.on_metrics
            async with agent_link(port, ident, "web-a") as framed:
                for _ in range(3):
                    await framed.send(many)
                assert await _answers(framed)

    anyio.run(main)
    warned = [r for r in caplog.records if "left out of /metrics" in r.getMessage()]
    assert len(warned) == MAX_REFUSED_FIGURES_LOGGED


@pytest.mark.parametrize("name", ["server_up", "alerts_open", "master_store_up"])
def test_an_agent_figure_named_like_the_masters_own_is_left_out(
    fleet: Fleet, monitor: MonitorService, name: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Was: a second `# TYPE relaysync_server_up` family (or relaysync_master_store_up beside
    the master's own): a duplicate family is invalid exposition, which Prometheus's parser
    refuses, so one agent's figure failed the scrape of the whole fleet."""
    monitor.on_metrics("", MASTER_SERVER, _report(MetricSample(name="store_up", value=1.0)))
    took = _send(fleet, monitor, {"web-a": _report(MetricSample(name=name, value=5.0))})
    assert took == {"web-a"}
    text = fleet.client.get("/metrics").text
    families = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert len(families) == len(set(families)), text
    assert f'relaysync_{name}{{server="web-a"}} 5.0' not in text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
