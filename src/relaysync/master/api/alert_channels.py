"""REST resource /api/alert-channels: where notifications go (email, webhook, sms, console).

A channel's secrets (every header value, keys such as password, token, api_key or
body_template, a URL's userinfo, path and query values) are never sent back: they read "********" (master/api/_secrets.py).
"""

from __future__ import annotations

import logging
from typing import Any

from pydantic import ConfigDict

from relaysync.master.api._context import Context
from relaysync.master.api._limits import InputModel, PathInt
from relaysync.master.api._secrets import mask, refuse_masked
from relaysync.monitor.alerts import build_channel

logger = logging.getLogger(__name__)


class ChannelIn(InputModel):
    name: str
    kind: str  # email | webhook | sms | console
    config: dict[str, Any] = {}  # per kind: see relaysync.monitor.alerts.<kind>
    enabled: bool = True


class ChannelOut(ChannelIn):
    model_config = ConfigDict(from_attributes=True, allow_inf_nan=True)

    id: int
    created_at: float


def _out(info: Any) -> ChannelOut:
    out = ChannelOut.model_validate(info)
    out.config = mask(out.config)
    return out


def list_channels(context: Context) -> list[ChannelOut]:
    """Every alert channel, secrets hidden."""
    return [_out(c) for c in context.store.monitoring.list_channels()]


def create_channel(body: ChannelIn, context: Context) -> ChannelOut:
    """Add an alert channel; its configuration is checked first (422 if wrong, or if it holds
    the mask of a hidden secret, as a listing posted back would)."""
    refuse_masked(body.config, f"alert channel {body.name!r} config")
    build_channel(body.kind, body.config, alarm=lambda notice: None)
    return _out(
        context.store.monitoring.create_channel(
            name=body.name, kind=body.kind, config=body.config, enabled=body.enabled
        )
    )


def delete_channel(channel_id: PathInt, context: Context) -> None:
    """Remove an alert channel."""
    context.store.monitoring.delete_channel(channel_id)
