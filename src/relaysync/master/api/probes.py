"""REST resource /api/probes: TCP and ping checks the master runs, with their latest results."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import Request
from pydantic import ConfigDict, Field

from relaysync.master.api._context import Context
from relaysync.master.api._limits import InputModel, PathInt

logger = logging.getLogger(__name__)


class ProbeIn(InputModel):
    name: str
    kind: str  # tcp | ping
    host: str = Field(pattern=r"^[A-Za-z0-9_.:\[\]][A-Za-z0-9_.:\[\]-]*$")  # never an option
    port: int = 0  # tcp only
    server: str = ""  # the server whose health it feeds ("" for none)
    for_s: float = Field(0.0, ge=0)
    timeout_s: float = 2.0
    enabled: bool = True


class ProbeOut(ProbeIn):
    model_config = ConfigDict(from_attributes=True, allow_inf_nan=True)

    id: int
    created_at: float
    last: dict[str, Any] | None = None  # {ok, latency_ms, detail, at} of the latest run


def _with_result(request: Request, probe: Any) -> ProbeOut:
    out = ProbeOut.model_validate(probe)
    monitor = getattr(request.app.state, "monitor", None)
    result = monitor.probe_results.get(probe.id) if monitor is not None else None
    if result is not None:
        out.last = {
            "ok": result.ok,
            "latency_ms": result.latency_ms,
            "detail": result.detail,
            "at": result.at,
        }
    return out


def list_probes(request: Request, context: Context) -> list[ProbeOut]:
    """Every probe, with its latest result."""
    return [_with_result(request, p) for p in context.store.monitoring.list_probes()]


def create_probe(body: ProbeIn, request: Request, context: Context) -> ProbeOut:
    """Add a probe; it runs from the monitor's next tick on."""
    return _with_result(request, context.store.monitoring.create_probe(**body.model_dump()))


def delete_probe(probe_id: PathInt, context: Context) -> None:
    """Remove a probe; its open alert resolves at the next tick."""
    context.store.monitoring.delete_probe(probe_id)
