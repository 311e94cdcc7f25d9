"""Collectors: a server's figures (CPU, memory, disks, load, TCP sessions) and relaysync's own.

Error handling: a figure that cannot be read (a folder not yet created, no permission to list
sockets) is left out of that report, never fatal.
Resource handling: psutil calls run in a worker thread; nothing is held between reports.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence

import anyio
import psutil

from relaysync.constants import EARLY_REPORT_GAP_S
from relaysync.protocol.messages import MetricSample, MetricsReport

logger = logging.getLogger(__name__)

FiguresFn = Callable[[], Iterable[MetricSample]]


def sample(name: str, value: float, **labels: str) -> MetricSample:
    """Return one figure; labels are kept sorted so equal series compare equal."""
    return MetricSample(name=name, value=float(value), labels=tuple(sorted(labels.items())))


def _disk_samples(paths: Iterable[str]) -> list[MetricSample]:
    seen: set[int] = set()
    out: list[MetricSample] = []
    for path in sorted(set(paths)):
        try:
            device = os.stat(path).st_dev
            usage = psutil.disk_usage(path)
        except OSError:
            continue
        if device in seen:  # one figure per file system, under the first folder on it
            continue
        seen.add(device)
        out.append(sample("disk_used_percent", usage.percent, path=path))
        out.append(sample("disk_free_bytes", usage.free, path=path))
    return out


def _tcp_connections(proc_net: str = "/proc/net") -> int | None:
    """The TCP sockets of this network namespace, IPv4 and IPv6, in any state (listening and
    TIME_WAIT too), from the kernel's counters (/proc/net/sockstat, sockstat6). What
    psutil.net_connections counts, but that reads /proc/net/tcp and tcp6 and every process's
    descriptors: 10 ms a report on the benchmark host, taken from a copy in flight."""
    counts: dict[str, int] = {}
    try:
        for name in ("sockstat", "sockstat6"):
            try:
                with open(f"{proc_net}/{name}", encoding="ascii") as f:
                    text = f.read()
            except FileNotFoundError:
                if name == "sockstat6":  # a kernel without IPv6
                    continue
                raise
            for line in text.splitlines():
                proto, _, rest = line.partition(":")
                fields = rest.split()
                for key, value in zip(fields[::2], fields[1::2], strict=False):
                    counts[f"{proto}.{key}"] = int(value)
    except (OSError, ValueError):
        return None
    if "TCP.inuse" not in counts:
        return None
    return counts["TCP.inuse"] + counts.get("TCP6.inuse", 0) + counts.get("TCP.tw", 0)


def collect_system(paths: Iterable[str]) -> list[MetricSample]:
    """Return this server's figures; `paths` are the synced folders whose disks count.

    CPU percent is since the previous call (the first call in a process reads 0).
    """
    memory = psutil.virtual_memory()
    out = [
        sample("cpu_percent", psutil.cpu_percent(interval=None)),
        sample("memory_percent", memory.percent),
        sample("memory_used_bytes", memory.total - memory.available),
        sample("load1", os.getloadavg()[0]),
    ]
    tcp = _tcp_connections()
    if tcp is not None:
        out.append(sample("tcp_connections", tcp))
    out.extend(_disk_samples(paths))
    return out


class Collector:
    """Builds a MetricsReport from the system figures and the caller's own figures."""

    def __init__(self, *, folders: Callable[[], Sequence[str]], own: FiguresFn) -> None:
        self.folders = folders
        self.own = own
        self.latest: MetricsReport | None = None
        self._soon = anyio.Event()  # `report_soon` was called: the next report goes early
        psutil.cpu_percent(interval=None)  # prime: the next call measures from here

    async def collect(self, *, early: bool = False) -> MetricsReport:
        """Return a fresh report (also kept as `latest`, for the agent's /metrics); `early`: one
        `report_soon` asked for, between the regular ones."""
        folders = list(self.folders())
        system = await anyio.to_thread.run_sync(collect_system, folders)
        samples = tuple(system) + tuple(self.own())
        report = MetricsReport(at=time.time(), samples=samples, early=early)
        self.latest = report
        return report

    async def serve(
        self,
        send: Callable[[MetricsReport], Awaitable[None] | None],
        *,
        interval_s: float,
        task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED,
    ) -> None:
        """Collect every `interval_s` and hand each report to `send`, until cancelled. After a
        `report_soon` a report goes at once (but never within EARLY_REPORT_GAP_S of the last
        one), marked early, and the regular ones keep their times: the master tells a silent
        agent by the gap between regular reports, which an early one must not shorten."""
        task_status.started()
        next_regular, early = 0.0, False
        while True:
            started = anyio.current_time()
            self._soon = anyio.Event()
            if not early:  # a regular report: the next one an interval after it
                next_regular = started + interval_s
            try:
                report = await self.collect(early=early)
            except (OSError, psutil.Error) as exc:
                logger.warning("collecting figures failed, will retry: %s", exc)
            except Exception:  # a bug in one figure costs this report, not the agent
                logger.exception("building the figures report failed, will retry")
            else:
                result = send(report)
                if result is not None:
                    await result
            # the gap runs from when this report went, not from when its collection began: a
            # slow collection (a busy host, a slow mount's statvfs) let the next go within it
            await anyio.sleep(min(interval_s, EARLY_REPORT_GAP_S))
            with anyio.move_on_after(next_regular - anyio.current_time()) as regular:
                await self._soon.wait()
            early = not regular.cancelled_caught and anyio.current_time() < next_regular

    def report_soon(self) -> None:
        """Send the next report now (a state the master shows changed), not at the interval."""
        self._soon.set()
