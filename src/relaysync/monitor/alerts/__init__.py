"""Alert channels: one module per kind (e-mail, webhook, SMS gateway, console alarm).

`build_channel(kind, config, ...)` checks a channel's configuration and returns a Channel, whose
`send(notice)` delivers one notification. Failures raise AlertDeliveryFailed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from relaysync.errors import ConfigError
from relaysync.monitor.alerts.base import Channel, Notice
from relaysync.monitor.alerts.console import ConsoleChannel
from relaysync.monitor.alerts.email import EmailChannel
from relaysync.monitor.alerts.sms import SmsChannel
from relaysync.monitor.alerts.webhook import WebhookChannel

CHANNELS: dict[str, type[Channel]] = {
    c.kind: c for c in (EmailChannel, WebhookChannel, SmsChannel, ConsoleChannel)
}


def build_channel(
    kind: str, config: dict[str, Any], *, alarm: Callable[[Notice], None] | None = None
) -> Channel:
    """Return a channel of `kind` from its stored configuration.

    Args:
        alarm: where the console channel raises its alarm (the master's event bus).

    Raises:
        ConfigError: an unknown kind or a bad configuration.
    """
    cls = CHANNELS.get(kind)
    if cls is None:
        raise ConfigError(
            f"alert channel kind {kind!r} must be one of {', '.join(sorted(CHANNELS))}"
        )
    return cls.from_config(config, alarm=alarm)


__all__ = ["CHANNELS", "Channel", "Notice", "build_channel"]
