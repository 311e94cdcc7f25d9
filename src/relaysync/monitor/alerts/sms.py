"""SMS alerts through an HTTP gateway, with a configurable request template.

The URL, the body and header values may hold {server} {metric} {value} {state} {message}
{alert_id}, each on one line and bounded (base.py `shown`). In the URL they are
percent-encoded; in a JSON body (its content type JSON, or none set and the template starting
with `{` or `[`) escaped as the inside of a JSON string; in a form body form-encoded. Filled in
as they were, a probe named `x", "to": "+1..."` added a recipient to a JSON body.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import quote, quote_plus

import httpx

from relaysync.constants import HTTP_TIMEOUT_S
from relaysync.errors import AlertDeliveryFailed, ConfigError
from relaysync.monitor.alerts.base import Channel, Notice, check_url, fill, hide_url, require

METHODS = ("GET", "POST", "PUT")


class SmsChannel(Channel):
    """config: url, method (POST), body_template (""), headers ({}), content_type."""

    kind = "sms"

    def __init__(
        self, *, url: str, method: str, body_template: str, headers: dict[str, str]
    ) -> None:
        self.url, self.method, self.body_template, self.headers = (
            url,
            method,
            body_template,
            headers,
        )

    @classmethod
    def from_config(
        cls, config: dict[str, Any], *, alarm: Callable[[Notice], None] | None = None
    ) -> Channel:
        url = check_url(str(require(config, "url", "sms")), "sms")
        method = str(config.get("method", "POST")).upper()
        if method not in METHODS:
            raise ConfigError(f"sms alert channel: method must be one of {', '.join(METHODS)}")
        headers = config.get("headers", {})
        if not isinstance(headers, dict):
            raise ConfigError("sms alert channel: headers must be an object")
        headers = {str(k): str(v) for k, v in headers.items()}
        if config.get("content_type"):
            headers["Content-Type"] = str(config["content_type"])
        return cls(
            url=url,
            method=method,
            body_template=str(config.get("body_template", "")),
            headers=headers,
        )

    def request_of(self, notice: Notice) -> tuple[str, str, dict[str, str], str]:
        """Return (method, url, headers, body) with the template filled in."""
        url = fill(self.url, notice, lambda v: quote(v, safe=""))
        headers = {k: fill(v, notice) for k, v in self.headers.items()}
        return self.method, url, headers, fill(self.body_template, notice, self._body_quote())

    def _body_quote(self) -> Callable[[str], str]:
        """How a value goes into the body: by its content type (none set: JSON if it looks so)."""
        content_type = next((v for k, v in self.headers.items() if k.lower() == "content-type"), "")
        media_type = content_type.partition(";")[0].strip().lower()
        if media_type == "application/x-www-form-urlencoded":
            return quote_plus
        if media_type == "application/json" or media_type.endswith("+json"):
            return _json_string
        if not media_type and self.body_template.lstrip().startswith(("{", "[")):
            return _json_string
        return str

    async def send(self, notice: Notice) -> None:
        method, url, headers, body = self.request_of(notice)
        try:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as client:
                response = await client.request(
                    method, url, headers=headers, content=body.encode() if body else None
                )
        except httpx.HTTPError as exc:
            raise AlertDeliveryFailed(f"sms gateway {hide_url(self.url)}", exc) from exc
        if response.status_code >= 300:
            raise AlertDeliveryFailed(
                f"sms gateway {hide_url(self.url)}", f"HTTP {response.status_code}"
            )


def _json_string(value: str) -> str:
    """`value` escaped as the inside of a JSON string (the template holds its quotes)."""
    return json.dumps(value, ensure_ascii=False)[1:-1]
