"""The store's monitoring part: figures with retention and downsampling, rules, channels, alert log.

Rows become the monitor's types in _monitoring_rows.py.

Error handling: bad input raises ConfigError or NotFound and changes nothing.
Resource handling: every method runs one transaction from the Store's session factories
(downsample: one per batch).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from relaysync.errors import ConfigError, NotFound
from relaysync.master.store._downsample import downsample
from relaysync.master.store._monitoring_rows import (
    _alert,
    _channel,
    _labels_key,
    _labels_of,
    _probe,
    _threshold,
)
from relaysync.master.store.models import (
    AlertChannelRow,
    AlertRow,
    MetricSampleRow,
    ProbeRow,
    Server,
    ThresholdRow,
)
from relaysync.monitor.types import (
    ALERT_STATES,
    CHANNEL_KINDS,
    OPERATORS,
    PROBE_KINDS,
    SCOPES,
    AlertInfo,
    ChannelInfo,
    ProbeRule,
    StoredSample,
    ThresholdRule,
)
from relaysync.protocol.messages import MetricSample

SessionFn = Callable[[str], AbstractContextManager[Session]]
HEALTH_STATES = ("ok", "unhealthy")


def _check_choice(value: str, choices: Sequence[str], what: str) -> None:
    if value not in choices:
        raise ConfigError(f"{what} {value!r} must be one of {', '.join(choices)}")


def _check_non_negative(value: float, what: str) -> None:
    _check_finite(value, what)
    if not value >= 0:
        raise ConfigError(f"{what} {value} must be a number >= 0")


def _check_finite(value: float, what: str) -> None:
    """NaN would reach the database as NULL (a 503 naming the SQL), and no figure is ever
    past infinity: both are refused here, with a 422."""
    if not math.isfinite(value):
        raise ConfigError(f"{what} must be a finite number, not {value}")


class MonitoringStore:
    """Monitoring tables, reached as `store.monitoring`."""

    def __init__(self, read: SessionFn, write: SessionFn) -> None:
        self._read = read
        self._write = write

    # --- figures ---

    def add_samples(self, batch: Sequence[tuple[str, float, Sequence[MetricSample]]]) -> int:
        """Store raw figures: (server, unix time, samples) per report. Returns rows written."""
        rows = [
            MetricSampleRow(
                server=server,
                name=s.name,
                labels=_labels_key(s.labels),
                value=s.value,
                at=at,
                resolution_s=0,
            )
            for server, at, samples in batch
            for s in samples
        ]
        if rows:
            with self._write("add samples") as session:
                session.add_all(rows)
        return len(rows)

    def samples(
        self, *, server: str, name: str, since: float = 0.0, limit: int = 10_000
    ) -> list[StoredSample]:
        """Return a series' figures since `since`, oldest first, raw and downsampled alike."""
        with self._read("samples") as session:
            rows = session.scalars(
                select(MetricSampleRow)
                .where(
                    MetricSampleRow.server == server,
                    MetricSampleRow.name == name,
                    MetricSampleRow.at >= since,
                )
                .order_by(MetricSampleRow.at, MetricSampleRow.id)
                .limit(limit)
            )
            return [
                StoredSample(
                    server=r.server,
                    name=r.name,
                    labels=_labels_of(r.labels),
                    value=r.value,
                    at=r.at,
                    resolution_s=r.resolution_s,
                )
                for r in rows
            ]

    def downsample(
        self,
        *,
        now: float,
        raw_retention_s: float,
        minute_retention_s: float,
        between: Callable[[], None] = lambda: None,
    ) -> tuple[int, int]:
        """Fold raw figures older than raw_retention_s into one-minute averages; drop averages
        older than minute_retention_s. Many short transactions (master/store/_downsample.py);
        `between` runs before each and may raise to stop. Returns (raw rows folded, averages
        dropped).
        """
        return downsample(
            self._write,
            now=now,
            raw_retention_s=raw_retention_s,
            minute_retention_s=minute_retention_s,
            between=between,
        )

    # --- thresholds ---

    def create_threshold(
        self,
        *,
        scope: str,
        target: str = "",
        metric: str,
        operator: str,
        value: float,
        for_s: float = 0.0,
        hysteresis: float = 0.0,
        enabled: bool = True,
    ) -> ThresholdRule:
        """Add a threshold.

        Raises:
            ConfigError: unknown scope or operator, a missing target, a negative duration.
            NotFound: scope server and no such server.
        """
        _check_choice(scope, SCOPES, "threshold scope")
        _check_choice(operator, OPERATORS, "threshold operator")
        _check_finite(value, "threshold value")
        _check_non_negative(for_s, "threshold for_s")
        _check_non_negative(hysteresis, "threshold hysteresis")
        if not metric or len(metric) > 64:
            raise ConfigError("a threshold needs a metric name of at most 64 characters")
        if scope != "all" and not target:
            raise ConfigError(f"a threshold of scope {scope} needs a target name")
        with self._write("create threshold") as session:
            if (
                scope == "server"
                and target != "master"
                and session.scalar(select(Server.name).where(Server.name == target)) is None
            ):
                raise NotFound("Server", target)
            row = ThresholdRow(
                scope=scope,
                target="" if scope == "all" else target,
                metric=metric,
                operator=operator,
                value=float(value),
                for_s=float(for_s),
                hysteresis=float(hysteresis),
                enabled=enabled,
                created_at=time.time(),
            )
            session.add(row)
            session.flush()
            return _threshold(row)

    def list_thresholds(self) -> list[ThresholdRule]:
        with self._read("list thresholds") as session:
            return [
                _threshold(r)
                for r in session.scalars(select(ThresholdRow).order_by(ThresholdRow.id))
            ]

    def delete_threshold(self, threshold_id: int) -> None:
        """Raises: NotFound."""
        with self._write("delete threshold") as session:
            row = session.get(ThresholdRow, threshold_id)
            if row is None:
                raise NotFound("Threshold", str(threshold_id))
            session.delete(row)

    # --- probes ---

    def create_probe(
        self,
        *,
        name: str,
        kind: str,
        host: str,
        port: int = 0,
        server: str = "",
        for_s: float = 0.0,
        timeout_s: float = 2.0,
        enabled: bool = True,
    ) -> ProbeRule:
        """Add a probe.

        Raises:
            ConfigError: unknown kind, bad port, a name in use, a bad timeout.
            NotFound: a server that does not exist.
        """
        _check_choice(kind, PROBE_KINDS, "probe kind")
        _check_non_negative(for_s, "probe for_s")
        if not name or not host:
            raise ConfigError("a probe needs a name and a host")
        if kind == "tcp" and not 0 < port < 65536:
            raise ConfigError(f"a tcp probe needs a port in 1..65535, got {port}")
        if not 0 < timeout_s <= 60:
            raise ConfigError(f"probe timeout_s {timeout_s} must be in (0, 60]")
        with self._write("create probe") as session:
            if session.scalar(select(ProbeRow.id).where(ProbeRow.name == name)) is not None:
                raise ConfigError(f"a probe named {name!r} exists already")
            if server and session.scalar(select(Server.name).where(Server.name == server)) is None:
                raise NotFound("Server", server)
            row = ProbeRow(
                name=name,
                kind=kind,
                host=host,
                port=port if kind == "tcp" else 0,
                server=server,
                for_s=float(for_s),
                timeout_s=float(timeout_s),
                enabled=enabled,
                created_at=time.time(),
            )
            session.add(row)
            session.flush()
            return _probe(row)

    def list_probes(self) -> list[ProbeRule]:
        with self._read("list probes") as session:
            return [_probe(r) for r in session.scalars(select(ProbeRow).order_by(ProbeRow.id))]

    def delete_probe(self, probe_id: int) -> None:
        """Raises: NotFound."""
        with self._write("delete probe") as session:
            row = session.get(ProbeRow, probe_id)
            if row is None:
                raise NotFound("Probe", str(probe_id))
            session.delete(row)

    # --- alert channels ---

    def create_channel(
        self, *, name: str, kind: str, config: dict[str, Any], enabled: bool = True
    ) -> ChannelInfo:
        """Add a notification channel (its config is checked by monitor/alerts before this).

        Raises:
            ConfigError: unknown kind or a name in use.
        """
        _check_choice(kind, CHANNEL_KINDS, "alert channel kind")
        if not name:
            raise ConfigError("an alert channel needs a name")
        with self._write("create alert channel") as session:
            if session.scalar(select(AlertChannelRow.id).where(AlertChannelRow.name == name)):
                raise ConfigError(f"an alert channel named {name!r} exists already")
            row = AlertChannelRow(
                name=name, kind=kind, config=dict(config), enabled=enabled, created_at=time.time()
            )
            session.add(row)
            session.flush()
            return _channel(row)

    def list_channels(self) -> list[ChannelInfo]:
        with self._read("list alert channels") as session:
            return [
                _channel(r)
                for r in session.scalars(select(AlertChannelRow).order_by(AlertChannelRow.id))
            ]

    def delete_channel(self, channel_id: int) -> None:
        """Raises: NotFound."""
        with self._write("delete alert channel") as session:
            row = session.get(AlertChannelRow, channel_id)
            if row is None:
                raise NotFound("Alert channel", str(channel_id))
            session.delete(row)

    # --- alert log ---

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
    ) -> tuple[AlertInfo, bool]:
        """Open an incident for `key` unless one is open. Returns (the open alert, whether new)."""
        with self._write("fire alert") as session:
            open_row = session.scalars(
                select(AlertRow)
                .where(AlertRow.key == key, AlertRow.state != "resolved")
                .order_by(AlertRow.id)
            ).first()
            if open_row is not None:
                return _alert(open_row), False
            row = AlertRow(
                key=key,
                server=server,
                kind=kind,
                subject=subject,
                value=value,
                message=message,
                state="firing",
                fired_at=now,
                acknowledged_by="",
            )
            session.add(row)
            session.flush()
            return _alert(row), True

    def resolve_alert(
        self, key: str, *, now: float, value: float | None = None, note: str = ""
    ) -> AlertInfo | None:
        """Close the open incident of `key`, adding `note` (why) to its message; returns it, or
        None if none was open."""
        with self._write("resolve alert") as session:
            row = session.scalars(
                select(AlertRow)
                .where(AlertRow.key == key, AlertRow.state != "resolved")
                .order_by(AlertRow.id)
            ).first()
            if row is None:
                return None
            row.state, row.resolved_at = "resolved", now
            if value is not None:
                row.value = value
            if note:
                row.message = f"{row.message} ({note})"
            return _alert(row)

    def acknowledge_alert(self, alert_id: int, *, by: str, now: float) -> AlertInfo:
        """Mark an open incident acknowledged (it still counts as failing until resolved).

        Raises:
            NotFound: no such alert.
            ConfigError: it is resolved already.
        """
        with self._write("acknowledge alert") as session:
            row = session.get(AlertRow, alert_id)
            if row is None:
                raise NotFound("Alert", str(alert_id))
            if row.state == "resolved":
                raise ConfigError(f"alert {alert_id} is resolved already")
            if row.state == "firing":
                row.state, row.acknowledged_at, row.acknowledged_by = "acknowledged", now, by
            return _alert(row)

    def list_alerts(
        self,
        *,
        state: str | None = None,
        server: str | None = None,
        open_only: bool = False,
        limit: int = 100,
    ) -> list[AlertInfo]:
        """Return incidents, newest first."""
        if state is not None:
            _check_choice(state, ALERT_STATES, "alert state")
        if not 1 <= limit <= 10_000:
            raise ConfigError(f"limit {limit} must be between 1 and 10000")
        query = select(AlertRow).order_by(AlertRow.id.desc()).limit(limit)
        if state is not None:
            query = query.where(AlertRow.state == state)
        if open_only:
            query = query.where(AlertRow.state != "resolved")
        if server is not None:
            query = query.where(AlertRow.server == server)
        with self._read("list alerts") as session:
            return [_alert(r) for r in session.scalars(query)]

    # --- health ---

    def set_health(self, name: str, health: str) -> bool:
        """Set a server's health by name; returns whether it changed (False for unknown names)."""
        _check_choice(health, HEALTH_STATES, "server health")
        with self._write("set health") as session:
            row = session.scalars(select(Server).where(Server.name == name)).first()
            if row is None or row.health == health:
                return False
            row.health = health
            return True
