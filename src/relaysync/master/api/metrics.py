"""REST resource /metrics: Prometheus exposition of every server's latest figures and the master's."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence

from fastapi import Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relaysync.master.api._context import Context
from relaysync.monitor.prometheus import SamplesCollector, registry_of
from relaysync.monitor.types import MASTER_SERVER
from relaysync.protocol.messages import MetricSample

logger = logging.getLogger(__name__)

FLEET_FIGURES = {"server_up", "server_healthy", "alerts_open"}  # _FleetCollector's, unprefixed


class _FleetCollector(Collector):
    """Servers' health and state, read from the store at scrape time."""

    def __init__(self, context: Context) -> None:
        self.context = context

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            "relaysync_server_up", "control link up (1) or not (0)", labels=["server"]
        )
        healthy = GaugeMetricFamily(
            "relaysync_server_healthy", "1 ok, 0 unhealthy", labels=["server"]
        )
        for s in self.context.store.list_servers():
            up.add_metric([s.name], 1.0 if s.state == "up" else 0.0)
            healthy.add_metric([s.name], 1.0 if s.health == "ok" else 0.0)
        firing = GaugeMetricFamily("relaysync_alerts_open", "alerts firing or acknowledged")
        firing.add_metric(
            [], len(self.context.store.monitoring.list_alerts(open_only=True, limit=10_000))
        )
        yield from (up, healthy, firing)


def get_metrics(request: Request, context: Context) -> Response:
    """Prometheus text: relaysync_<figure>{server=NAME,...} per agent, relaysync_master_<figure>
    for the master itself, and relaysync_server_up / _healthy / relaysync_alerts_open."""
    monitor = getattr(request.app.state, "monitor", None)
    figures: Mapping[str, Sequence[MetricSample]] = monitor.figures() if monitor is not None else {}

    # An agent's figure named like one of the master's families would be a second family of
    # that name, which is invalid exposition: the whole scrape would fail. It is left out.
    masters = {f"master_{s.name}" for s in figures.get(MASTER_SERVER, ())} | FLEET_FIGURES

    def agents() -> Mapping[str, Sequence[MetricSample]]:
        return {
            k: [s for s in v if s.name not in masters]
            for k, v in figures.items()
            if k != MASTER_SERVER
        }

    def master() -> Mapping[str, Sequence[MetricSample]]:
        return {k: v for k, v in figures.items() if k == MASTER_SERVER}

    registry = registry_of(
        SamplesCollector(agents),
        SamplesCollector(master, prefix="relaysync_master_"),
        _FleetCollector(context),
    )
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
