"""Monitoring's value types: rules, channels, alerts and stored figures, as frozen snapshots."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from relaysync.constants import MASTER_MONITOR_NAME

Scope = Literal["server", "group", "all"]
Operator = Literal[">", ">=", "<", "<=", "==", "!="]
ProbeKind = Literal["tcp", "ping"]
ChannelKind = Literal["email", "webhook", "sms", "console"]
AlertState = Literal["firing", "acknowledged", "resolved"]
AlertKind = Literal["threshold", "probe", "heartbeat", "no_data"]

SCOPES: tuple[Scope, ...] = ("server", "group", "all")
OPERATORS: tuple[Operator, ...] = (">", ">=", "<", "<=", "==", "!=")
PROBE_KINDS: tuple[ProbeKind, ...] = ("tcp", "ping")
CHANNEL_KINDS: tuple[ChannelKind, ...] = ("email", "webhook", "sms", "console")
ALERT_STATES: tuple[AlertState, ...] = ("firing", "acknowledged", "resolved")
MASTER_SERVER = MASTER_MONITOR_NAME  # the server name the master's own figures go under


@dataclass(frozen=True, slots=True, kw_only=True)
class ThresholdRule:
    """Fire when `metric` `operator` `value` holds for `for_s`; resolve past `hysteresis`."""

    id: int
    scope: Scope
    target: str  # server name (scope server) or group name (scope group); "" for all
    metric: str
    operator: Operator
    value: float
    for_s: float = 0.0
    hysteresis: float = 0.0
    enabled: bool = True
    created_at: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ProbeRule:
    """A check the master runs: TCP connect to host:port, or one ICMP echo to host."""

    id: int
    name: str
    kind: ProbeKind
    host: str
    port: int = 0
    server: str = ""  # the server whose health it feeds; "" for none
    for_s: float = 0.0
    timeout_s: float = 2.0
    enabled: bool = True
    created_at: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class ChannelInfo:
    id: int
    name: str
    kind: ChannelKind
    config: dict[str, Any] = field(default_factory=dict)
    enabled: bool = True
    created_at: float = 0.0


@dataclass(frozen=True, slots=True, kw_only=True)
class AlertInfo:
    """One incident of the alert log."""

    id: int
    key: str  # the condition: threshold:ID:SERVER, probe:ID, heartbeat:SERVER, no_data:SERVER
    server: str
    kind: AlertKind
    subject: str  # the metric or the probe's name
    value: float | None
    message: str
    state: AlertState
    fired_at: float
    acknowledged_at: float | None = None
    acknowledged_by: str = ""
    resolved_at: float | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class StoredSample:
    server: str
    name: str
    labels: tuple[tuple[str, str], ...]
    value: float
    at: float
    resolution_s: int  # 0 raw, 60 for one-minute averages
