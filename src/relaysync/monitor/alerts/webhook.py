"""Webhook alerts: the notice as a JSON POST (httpx)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx

from relaysync.constants import HTTP_TIMEOUT_S
from relaysync.errors import AlertDeliveryFailed, ConfigError
from relaysync.monitor.alerts.base import Channel, Notice, check_url, hide_url, require


class WebhookChannel(Channel):
    """config: url, headers ({} by default)."""

    kind = "webhook"

    def __init__(self, *, url: str, headers: dict[str, str]) -> None:
        self.url, self.headers = url, headers

    @classmethod
    def from_config(
        cls, config: dict[str, Any], *, alarm: Callable[[Notice], None] | None = None
    ) -> Channel:
        url = check_url(str(require(config, "url", "webhook")), "webhook")
        headers = config.get("headers", {})
        if not isinstance(headers, dict):
            raise ConfigError("webhook alert channel: headers must be an object")
        return cls(url=url, headers={str(k): str(v) for k, v in headers.items()})

    async def send(self, notice: Notice) -> None:
        try:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as client:
                response = await client.post(self.url, json=notice.to_json(), headers=self.headers)
        except httpx.HTTPError as exc:
            raise AlertDeliveryFailed(f"webhook {hide_url(self.url)}", exc) from exc
        if response.status_code >= 300:
            raise AlertDeliveryFailed(
                f"webhook {hide_url(self.url)}", f"HTTP {response.status_code}"
            )
