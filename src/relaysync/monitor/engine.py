"""The master's monitor: keeps agents' figures, runs probes and self-watch, checks thresholds,
keeps the alert log, notifies channels once per state change, and sets servers' health.

Error handling: a failing probe is logged and retried next tick; a failed delivery is retried
with backoff (monitor/notifier.py); a store failure skips the tick (the master's own store_up
figure shows it), and an alert's firing or resolving that the store refused is made again at the
next tick.
Resource handling: notifications run in the service's task group, each under a timeout; so does
retention (downsampling), in a worker thread, stopped between its batches on cancellation.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Protocol

import anyio
from anyio.abc import TaskGroup, TaskStatus

from relaysync.constants import HEARTBEAT_GRACE_S, METRICS_INTERVAL_S
from relaysync.errors import StoreError
from relaysync.monitor.flapping import (
    NOTICE_SETTLE_S,
    NOTICE_WINDOW_S,
    NoticeLimiter,
)
from relaysync.monitor.notifier import Notifier
from relaysync.monitor.observations import Observation, ReportClock
from relaysync.monitor.probes import ProbeResult, run_probe
from relaysync.monitor.thresholds import (
    Conditions,
    applies_to,
    breached,
    cleared,
    value_for,
)
from relaysync.monitor.transitions import AlertTransitions
from relaysync.monitor.types import MASTER_SERVER, AlertInfo, ChannelInfo, ProbeRule, ThresholdRule
from relaysync.protocol.messages import MetricSample, MetricsReport

logger = logging.getLogger(__name__)

STALE_AFTER_TICKS = 30  # figures older than this many ticks (or 5 min) are not judged
DOWNSAMPLE_EVERY_S = 60.0  # retention runs this often


class ServerView(Protocol):
    @property
    def node_id(self) -> str: ...
    @property
    def name(self) -> str: ...
    @property
    def group(self) -> str: ...
    @property
    def health(self) -> str: ...
    @property
    def created_at(self) -> float: ...
    @property
    def last_seen(self) -> float | None: ...


class MonitoringTables(Protocol):
    """What the monitor needs from the store's monitoring part (master/store/_monitoring.py)."""

    def add_samples(self, batch: Sequence[tuple[str, float, Sequence[MetricSample]]]) -> int: ...
    def downsample(
        self,
        *,
        now: float,
        raw_retention_s: float,
        minute_retention_s: float,
        between: Callable[[], None] = ...,
    ) -> tuple[int, int]: ...
    def list_thresholds(self) -> list[ThresholdRule]: ...
    def list_probes(self) -> list[ProbeRule]: ...
    def list_channels(self) -> list[ChannelInfo]: ...
    def fire_alert(
        self,
        *,
        key: str,
        server: str,
        kind: str,
        subject: str,
        value: float | None,
        message: str,
        now: float,
    ) -> tuple[AlertInfo, bool]: ...
    def resolve_alert(
        self, key: str, *, now: float, value: float | None = None, note: str = ""
    ) -> AlertInfo | None: ...
    def list_alerts(
        self,
        *,
        state: str | None = None,
        server: str | None = None,
        open_only: bool = False,
        limit: int = 100,
    ) -> list[AlertInfo]: ...
    def set_health(self, name: str, health: str) -> bool: ...


class FleetStore(Protocol):
    @property
    def monitoring(self) -> MonitoringTables: ...
    def list_servers(self) -> Sequence[ServerView]: ...


Publish = Callable[[str, dict[str, Any]], object]  # (event type value, data) onto the event bus


class MonitorService(AlertTransitions):
    """Runs until cancelled; `on_metrics` is fed by the control server."""

    def __init__(
        self,
        *,
        store: FleetStore,
        publish: Publish,
        links_up: Callable[[], set[str]],
        self_figures: Callable[[], list[MetricSample]],
        interval_s: float = 10.0,
        report_interval_s: float = METRICS_INTERVAL_S,
        notice_window_s: float = NOTICE_WINDOW_S,
        notice_settle_s: float | None = None,
        heartbeat_grace_s: float = HEARTBEAT_GRACE_S,
        raw_retention_s: float = 86_400.0,
        minute_retention_s: float = 30 * 86_400.0,
        clock: Callable[[], float] = time.time,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.clock = clock  # the time of ticks and alerts, as stored and shown (wall)
        # how long ago figures came, for how long a rule held, notice limits, downsample runs
        self.monotonic = monotonic
        self.publish = publish
        self.links_up = links_up
        self.self_figures = self_figures
        self.interval_s = interval_s
        self.report_interval_s = report_interval_s  # how often agents send figures
        self.reports = ReportClock()
        if notice_settle_s is None:  # the default, or a fifth of a window shorter than 10 min
            notice_settle_s = min(NOTICE_SETTLE_S, notice_window_s / 5)
        self.limiter = NoticeLimiter(notice_window_s, notice_settle_s)  # `due` runs each tick
        self.raw_retention_s, self.minute_retention_s = raw_retention_s, minute_retention_s
        # server -> (received on self.monotonic(), figures)
        self.latest: dict[str, tuple[float, tuple[MetricSample, ...]]] = {}
        self.probe_results: dict[int, ProbeResult] = {}
        self._probing: set[int] = set()  # probes running now
        self.conditions = Conditions()
        self.notifier = Notifier(list_channels=store.monitoring.list_channels, alarm=self._alarm)
        self._key_server: dict[str, str] = {}
        self._unchecked: set[str] = set()  # keys gone whose open alerts are not resolved yet
        self._pending: list[tuple[str, float, Sequence[MetricSample]]] = []
        self._tg: TaskGroup | None = None
        # when the last downsample run started (self.monotonic()); whether one goes on
        self._last_downsample: float | None = None
        self._downsampling = False
        self.ticks = 0
        self.heartbeat_grace_s = heartbeat_grace_s
        self._started_at = clock()  # again when `serve` starts: the grace counts from there
        self._linked: set[str] = set()  # node ids seen linked at a tick since then
        # node id -> when a tick first listed it (self.monotonic()): its grace counts from there
        self._first_listed: dict[str, float] = {}

    # --- input ---

    def on_metrics(self, node_id: str, name: str, report: MetricsReport) -> None:
        """Keep an agent's newest figures (called on the event loop's thread)."""
        received = self.monotonic()  # how long ago, not when: the wall clock may step
        self.latest[name] = (received, report.samples)
        self.reports.reported(name, received, (s.name for s in report.samples), early=report.early)
        self._pending.append((name, report.at, report.samples))

    def figures(self) -> dict[str, tuple[MetricSample, ...]]:
        """Every server's latest figures (the master's own under MASTER_SERVER)."""
        return {name: samples for name, (_, samples) in self.latest.items()}

    # --- loop ---

    async def serve(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        for alert in await anyio.to_thread.run_sync(
            partial(self.store.monitoring.list_alerts, open_only=True, limit=10_000)
        ):
            self.conditions.get(alert.key, 0.0, firing=True)  # no second notice after a restart
            self._key_server[alert.key] = alert.server
        self._started_at, self._first_listed = self.clock(), {}
        async with anyio.create_task_group() as tg:
            self._tg = tg
            task_status.started()
            while True:
                started = anyio.current_time()
                try:
                    await self.tick()
                except StoreError as exc:
                    logger.warning("monitor tick skipped, will retry: %s", exc)
                await anyio.sleep(max(0.0, self.interval_s - (anyio.current_time() - started)))

    async def tick(self) -> None:
        """One round: store figures, self-watch, probes, thresholds, alerts, health."""
        # Wall time for what is stored or shown; monotonic time for how long something lasted
        # (silences, for_s): a wall clock stepped forward (NTP) made every agent look silent.
        now, mono = self.clock(), self.monotonic()
        own = tuple(await anyio.to_thread.run_sync(self.self_figures))
        self.latest[MASTER_SERVER] = (mono, own)
        self.reports.reported(MASTER_SERVER, mono, (s.name for s in own))
        pending, self._pending = self._pending, []
        servers = await anyio.to_thread.run_sync(self._store_round, pending)
        self._start_downsample(now, mono)
        probes = await anyio.to_thread.run_sync(self.store.monitoring.list_probes)
        self._start_probes([p for p in probes if p.enabled])
        rules = await anyio.to_thread.run_sync(self.store.monitoring.list_thresholds)
        judged, live = self._thresholds(rules, servers, mono)
        # a probe is checked even before its first result (it runs in the background: after a
        # restart its open alert must not resolve, then fire again, at the first ticks)
        live.update(f"probe:{p.id}" for p in probes if p.enabled)
        up = self.links_up()
        observations = (
            self._heartbeats(servers, up, mono) + self._silences(servers, up, mono) + judged
        ) + self._probes(probes)
        await self._apply(observations, live, now, mono)
        await anyio.to_thread.run_sync(self._update_health, servers)
        for notice in self.limiter.due(mono):
            assert self._tg is not None
            self.notifier.start(self._tg, notice)
        self.ticks += 1

    def _store_round(
        self, pending: list[tuple[str, float, Sequence[MetricSample]]]
    ) -> Sequence[ServerView]:
        if pending:
            self.store.monitoring.add_samples(pending)
        return self.store.list_servers()

    def _start_downsample(self, now: float, mono: float) -> None:
        """Start retention every DOWNSAMPLE_EVERY_S, one run at a time, in the background: a
        backlog (the master was down) takes many short transactions, and the tick goes on.
        Scheduled on the monotonic clock (on the wall clock, one stepped back an hour stopped
        the runs for that hour); each run folds the figures older than their retention by
        `now`, the wall clock the figures are stamped with."""
        last = self._last_downsample
        if self._downsampling or (last is not None and mono - last < DOWNSAMPLE_EVERY_S):
            return
        assert self._tg is not None
        self._last_downsample, self._downsampling = mono, True
        self._tg.start_soon(self._downsample, now)

    async def _downsample(self, now: float) -> None:
        try:
            await anyio.to_thread.run_sync(
                partial(
                    self.store.monitoring.downsample,
                    now=now,
                    raw_retention_s=self.raw_retention_s,
                    minute_retention_s=self.minute_retention_s,
                    between=anyio.from_thread.check_cancelled,  # shutdown: stop between batches
                )
            )
        except StoreError as exc:
            logger.warning("downsampling figures failed, will retry: %s", exc)
        finally:
            self._downsampling = False

    def _start_probes(self, probes: list[ProbeRule]) -> None:
        """Start each probe that is not still running, in the background: a probe waits up to its
        own timeout (60 s at most) and must not hold up the tick; its result is judged at the
        first tick after it ends."""
        assert self._tg is not None
        for gone in self.probe_results.keys() - {rule.id for rule in probes}:
            del self.probe_results[gone]  # re-enabled later, it is not judged on an old result
        for rule in probes:
            if rule.id not in self._probing:
                self._probing.add(rule.id)
                self._tg.start_soon(self._probe, rule)

    async def _probe(self, rule: ProbeRule) -> None:
        logger.debug("probe %s started", rule.name)
        try:
            self.probe_results[rule.id] = await run_probe(rule)
        finally:
            self._probing.discard(rule.id)

    # --- observations ---

    def _heartbeats(
        self, servers: Sequence[ServerView], up: set[str], mono: float
    ) -> list[Observation]:
        """A heartbeat observation per server: bad while its control link is down, except for a
        server not linked since the monitor started within its grace (HEARTBEAT_GRACE_S), which
        holds the state. Linked: seen so at a tick, or registered since (its last_seen: a link
        up and down again between two ticks counts too). The grace counts on the monotonic
        clock from the first tick that listed the server (the monitor's start, or the server's
        joining): on the wall clock, one stepped forward ended it at once, one stepped back
        stretched it by the step."""
        self._linked.update(s.node_id for s in servers if s.node_id in up)
        self._linked.update(
            s.node_id
            for s in servers
            if s.last_seen is not None and s.last_seen >= self._started_at
        )
        listed = {s.node_id: self._first_listed.get(s.node_id, mono) for s in servers}
        self._first_listed = listed  # servers removed are forgotten
        waited_s = {node_id: mono - since for node_id, since in listed.items()}
        return [
            Observation(
                key=f"heartbeat:{s.name}",
                for_s=self.interval_s,
                bad=s.node_id not in up
                and (s.node_id in self._linked or waited_s[s.node_id] >= self.heartbeat_grace_s),
                clear=s.node_id in up,
                server=s.name,
                kind="heartbeat",
                subject="heartbeat",
                value=None,
                message=f"agent {s.name}: control link down",
            )
            for s in servers
        ]

    def _silences(
        self, servers: Sequence[ServerView], up: set[str], mono: float
    ) -> list[Observation]:
        """A "no data" observation per server: its link is up but its figures stopped."""
        return [
            self.reports.observe(
                s.name, up=s.node_id in up, now=mono, interval_s=self.report_interval_s
            )
            for s in servers
        ]

    def _thresholds(
        self, rules: list[ThresholdRule], servers: Sequence[ServerView], mono: float
    ) -> tuple[list[Observation], set[str]]:
        """Return observations of fresh figures, and every key the rules cover (judged or not)."""
        targets = [(s.name, s.group) for s in servers] + [(MASTER_SERVER, "")]
        out: list[Observation] = []
        live: set[str] = set()
        for rule in rules:
            for name, group in targets:
                if not _covers(rule, name, group):
                    continue
                live.add(f"threshold:{rule.id}:{name}")
                observation = self._judge(rule, name, mono)
                if observation is not None:
                    out.append(observation)
        return out, live

    def _judge(self, rule: ThresholdRule, name: str, mono: float) -> Observation | None:
        """Observe one rule on one server: its figure, its series gone, or None (stale figures)."""
        received, samples = self.latest.get(name, (-math.inf, ()))
        if mono - received > max(300.0, STALE_AFTER_TICKS * self.interval_s):
            return None
        value = value_for(rule, samples)
        if value is None and not self.reports.series_gone(
            name, rule.metric, now=mono, interval_s=self.report_interval_s
        ):
            return None
        return Observation(
            key=f"threshold:{rule.id}:{name}",
            for_s=rule.for_s,
            bad=value is not None and breached(rule.operator, value, rule.value),
            clear=value is None or cleared(rule.operator, value, rule.value, rule.hysteresis),
            server=name,
            kind="threshold",
            subject=rule.metric,
            value=value,
            message=f"{rule.metric} {rule.operator} {rule.value:g} on {name}",
            note="series gone" if value is None else "",
            rule_since=rule.created_at,
        )

    def _probes(self, probes: list[ProbeRule]) -> list[Observation]:
        out = []
        for rule in probes:
            result = self.probe_results.get(rule.id)
            if not rule.enabled or result is None:
                continue
            where = f"{rule.host}:{rule.port}" if rule.kind == "tcp" else rule.host
            out.append(
                Observation(
                    key=f"probe:{rule.id}",
                    for_s=rule.for_s,
                    bad=not result.ok,
                    clear=result.ok,
                    server=rule.server,
                    kind="probe",
                    subject=rule.name,
                    value=result.latency_ms,
                    message=f"{rule.kind} probe {rule.name} ({where}): {result.detail or 'ok'}",
                    rule_since=rule.created_at,
                )
            )
        return out

    # --- health ---

    def _update_health(self, servers: Sequence[ServerView]) -> None:
        failing = {self._key_server.get(k, "") for k in self.conditions.firing_keys()}
        for s in servers:
            health = "unhealthy" if s.name in failing else "ok"
            if s.health != health and self.store.monitoring.set_health(s.name, health):
                logger.info("server %s is now %s", s.name, health)
                self.publish(
                    "server_health", {"name": s.name, "node_id": s.node_id, "health": health}
                )


def _covers(rule: ThresholdRule, name: str, group: str) -> bool:
    """Return whether `rule` checks server `name`; the master's own figures only by name."""
    if name == MASTER_SERVER and not (rule.scope == "server" and rule.target == MASTER_SERVER):
        return False
    return applies_to(rule, name, group)
