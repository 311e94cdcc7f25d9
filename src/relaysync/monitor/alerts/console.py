"""Console alarms: the notice as an `alarm` event on the master's event bus, for the web console."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from relaysync.errors import ConfigError
from relaysync.monitor.alerts.base import Channel, Notice


class ConsoleChannel(Channel):
    """config: none. The alarm goes where the master says (its event bus)."""

    kind = "console"

    def __init__(self, alarm: Callable[[Notice], None]) -> None:
        self.alarm = alarm

    @classmethod
    def from_config(
        cls, config: dict[str, Any], *, alarm: Callable[[Notice], None] | None = None
    ) -> Channel:
        if alarm is None:
            raise ConfigError("console alert channel: no console to raise alarms on")
        return cls(alarm)

    async def send(self, notice: Notice) -> None:
        self.alarm(notice)
