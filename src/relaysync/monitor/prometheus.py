"""Prometheus exposition of relaysync figures: a prometheus_client collector over latest samples.

The master exposes every server's latest figures labelled server=NAME plus its own; an agent
exposes its own. Metric names get the `relaysync_` prefix.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Protocol
from wsgiref.simple_server import WSGIServer

import anyio
from anyio.abc import TaskStatus
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from relaysync.config.load import split_address
from relaysync.errors import CannotListen
from relaysync.protocol.messages import MetricSample, MetricsReport

logger = logging.getLogger(__name__)

PREFIX = "relaysync_"

SamplesBySource = Callable[[], Mapping[str, Sequence[MetricSample]]]


def families(
    by_server: Mapping[str, Sequence[MetricSample]], *, prefix: str = PREFIX
) -> list[Metric]:
    """Turn {server: samples} into gauge families, one per metric name, labelled server=NAME."""
    grouped: dict[str, list[tuple[str, MetricSample]]] = {}
    for server, samples in by_server.items():
        for s in samples:
            grouped.setdefault(s.name, []).append((server, s))
    out: list[Metric] = []
    for name in sorted(grouped):
        labelled = [(server, _exported(s.labels), s.value) for server, s in grouped[name]]
        label_names = sorted({k for _, labels, _ in labelled for k in labels})
        family = GaugeMetricFamily(
            prefix + name, f"relaysync figure {name}", labels=["server", *label_names]
        )
        for server, labels, value in labelled:
            family.add_metric([server, *(labels.get(k, "") for k in label_names)], value)
        out.append(family)
    return out


def _exported(labels: Sequence[tuple[str, str]]) -> dict[str, str]:
    """A sample's labels, its own `server` renamed `exported_server` (`exported_exported_server`
    if that is taken, ...) as Prometheus does with honor_labels false: the server a figure is
    labelled with is the one whose link it came over, never what the agent says."""
    own = {k for k, _ in labels}
    out: dict[str, str] = {}
    for key, value in labels:
        if key == "server":
            key = "exported_server"
            while key in own:
                key = "exported_" + key
        out[key] = value
    return out


class SamplesCollector(Collector):
    """A prometheus_client collector that reads the latest samples at scrape time."""

    def __init__(self, source: SamplesBySource, *, prefix: str = PREFIX) -> None:
        self.source = source
        self.prefix = prefix

    def collect(self) -> Iterator[Metric]:
        yield from families(self.source(), prefix=self.prefix)


def registry_of(*collectors: Collector) -> CollectorRegistry:
    """Return a fresh registry (not the process-global one) holding `collectors`."""
    registry = CollectorRegistry(auto_describe=False)
    for c in collectors:
        registry.register(c)
    return registry


class MetricsHttpServer:
    """prometheus_client's HTTP server on host:port, in its own thread.

    Resource handling: start() binds and returns the port; close() shuts the server down.
    """

    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self.registry, self.host, self.port = registry, host, port
        self._server: WSGIServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> int:
        self._server, self._thread = start_http_server(
            self.port, addr=self.host, registry=self.registry
        )
        port = int(self._server.server_address[1])
        logger.info("prometheus /metrics on %s:%s", self.host, port)
        return port

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(5)


class _LatestReport(Protocol):
    latest: MetricsReport | None


async def serve_agent_metrics(
    collector: _LatestReport,
    name: str,
    listen: str,
    *,
    task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the agent's own latest figures at http://listen/metrics until cancelled.

    Raises:
        CannotListen: `listen` cannot be bound (in use, not an address of this host).
    """

    def latest() -> dict[str, Sequence[MetricSample]]:
        report = collector.latest
        return {name: report.samples} if report is not None else {}

    host, port = split_address(listen)
    server = MetricsHttpServer(registry_of(SamplesCollector(latest)), host, port)
    try:
        bound = await anyio.to_thread.run_sync(server.start)
    except OSError as exc:
        raise CannotListen.of(listen, exc, "--metrics-listen") from exc
    try:
        task_status.started(bound)
        await anyio.sleep_forever()
    finally:
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(server.close)
