"""The master watching itself: its process (RSS, CPU), its store (reachable, latency), its queues,
and the expiry of its control certificate."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import psutil

from relaysync.monitor.collectors import sample
from relaysync.protocol.messages import MetricSample

logger = logging.getLogger(__name__)


class SelfWatch:
    """Collects the master's own figures; collect() blocks (it touches the store): run it in a thread."""

    def __init__(
        self,
        *,
        store_ping: Callable[[], object],
        queue_length: Callable[[], int],
        spooled_records: Callable[[], int] = lambda: 0,
        cert_expires_in_s: Callable[[], float] | None = None,
    ) -> None:
        self.store_ping = store_ping
        self.queue_length = queue_length
        self.spooled_records = spooled_records  # the job log's, on disk while the store is behind
        self.cert_expires_in_s = cert_expires_in_s  # the control certificate's, agents pin it
        self.process = psutil.Process()
        self.process.cpu_percent(interval=None)  # prime: the next call measures from here

    def collect(self) -> list[MetricSample]:
        with self.process.oneshot():
            out = [
                sample("process_rss_bytes", self.process.memory_info().rss),
                sample("process_cpu_percent", self.process.cpu_percent(interval=None)),
                sample("process_threads", self.process.num_threads()),
            ]
        started = time.monotonic()
        try:
            self.store_ping()
        except Exception as exc:  # noqa: BLE001 - any failure means "store unreachable", as a figure
            logger.warning("store unreachable: %s", exc)
            out.append(sample("store_up", 0))
        else:
            out.append(sample("store_up", 1))
            out.append(sample("store_latency_ms", (time.monotonic() - started) * 1000))
        out.append(sample("joblog_queue", self.queue_length()))
        out.append(sample("joblog_spooled_records", self.spooled_records()))
        if self.cert_expires_in_s is not None:
            out.append(sample("cert_expires_in_s", self.cert_expires_in_s()))
        return out
