"""The monitoring rows of the store as the monitor's types, and a figure's labels as stored.

A rule, a channel or an alert row becomes the frozen type the API and the monitor read
(monitor/types.py); labels are stored as one sorted JSON key. Moved out of
master/store/_monitoring.py, whose `MonitoringStore` reads and writes the rows.
"""

from __future__ import annotations

import json
from collections.abc import Iterable

from relaysync.master.store.models import AlertChannelRow, AlertRow, ProbeRow, ThresholdRow
from relaysync.monitor.types import AlertInfo, ChannelInfo, ProbeRule, ThresholdRule


def _labels_key(labels: Iterable[tuple[str, str]]) -> str:
    return json.dumps(sorted(labels), separators=(",", ":")) if labels else ""


def _labels_of(key: str) -> tuple[tuple[str, str], ...]:
    return tuple((str(k), str(v)) for k, v in json.loads(key)) if key else ()


def _threshold(r: ThresholdRow) -> ThresholdRule:
    return ThresholdRule(
        id=r.id,
        scope=r.scope,  # type: ignore[arg-type]
        target=r.target,
        metric=r.metric,  # type: ignore[arg-type]
        operator=r.operator,  # type: ignore[arg-type]
        value=r.value,
        for_s=r.for_s,  # type: ignore[arg-type]
        hysteresis=r.hysteresis,
        enabled=r.enabled,
        created_at=r.created_at,
    )


def _probe(r: ProbeRow) -> ProbeRule:
    return ProbeRule(
        id=r.id,
        name=r.name,
        kind=r.kind,  # type: ignore[arg-type]
        host=r.host,
        port=r.port,  # type: ignore[arg-type]
        server=r.server,
        for_s=r.for_s,
        timeout_s=r.timeout_s,
        enabled=r.enabled,
        created_at=r.created_at,
    )


def _channel(r: AlertChannelRow) -> ChannelInfo:
    return ChannelInfo(
        id=r.id,
        name=r.name,
        kind=r.kind,  # type: ignore[arg-type]
        config=dict(r.config),  # type: ignore[arg-type]
        enabled=r.enabled,
        created_at=r.created_at,
    )


def _alert(r: AlertRow) -> AlertInfo:
    return AlertInfo(
        id=r.id,
        key=r.key,
        server=r.server,
        kind=r.kind,  # type: ignore[arg-type]
        subject=r.subject,
        value=r.value,
        message=r.message,
        state=r.state,  # type: ignore[arg-type]
        fired_at=r.fired_at,  # type: ignore[arg-type]
        acknowledged_at=r.acknowledged_at,
        acknowledged_by=r.acknowledged_by,
        resolved_at=r.resolved_at,
    )
