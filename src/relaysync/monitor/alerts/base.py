"""What every alert channel shares: the notice it sends and the Channel interface."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import httpx

from relaysync.errors import ConfigError


@dataclass(frozen=True, slots=True, kw_only=True)
class Notice:
    """One notification: an alert that fired or resolved."""

    alert_id: int
    server: str
    metric: str  # the metric, the probe's name, or "heartbeat"
    value: float | None
    state: str  # firing | resolved
    message: str
    at: float  # unix time

    def fields(self) -> dict[str, str]:
        """The placeholders a template may use, as text."""
        value = "" if self.value is None else f"{self.value:g}"
        return {
            "alert_id": str(self.alert_id),
            "server": self.server,
            "metric": self.metric,
            "value": value,
            "state": self.state,
            "message": self.message,
        }

    def subject(self) -> str:
        return f"[relaysync] {self.state.upper()}: {self.server} {self.metric}"

    def text(self) -> str:
        value = "" if self.value is None else f" (value {self.value:g})"
        return (
            f"{self.state}: {self.message}{value}\nserver: {self.server}\nalert: {self.alert_id}\n"
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "alert_id": self.alert_id,
            "server": self.server,
            "metric": self.metric,
            "value": self.value,
            "state": self.state,
            "message": self.message,
            "at": self.at,
        }


_PLACEHOLDER = re.compile(r"\{(alert_id|server|metric|value|state|message)\}")


def fill(template: str, notice: Notice, quote: Callable[[str], str] = str) -> str:
    """Replace {server} {metric} {value} {state} {message} {alert_id}; other braces stay as they are
    (so a JSON body template needs no escaping)."""
    values = notice.fields()
    return _PLACEHOLDER.sub(lambda m: quote(values[m.group(1)]), template)


def require(config: dict[str, Any], key: str, kind: str) -> Any:
    value = config.get(key)
    if value in (None, "", []):
        raise ConfigError(f"{kind} alert channel needs {key!r}")
    return value


def check_url(url: str, kind: str) -> str:
    """Return `url` if an HTTP client can send to it: http(s), a host, a port in 1..65535.

    Raises:
        ConfigError: naming the channel kind and what is wrong.
    """
    try:
        parsed = httpx.URL(url)
        port = parsed.port
    except (httpx.InvalidURL, ValueError) as exc:
        raise ConfigError(f"{kind} alert channel: url {url!r}: {exc}") from exc
    if parsed.scheme not in ("http", "https"):
        raise ConfigError(f"{kind} alert channel: url {url!r} must be http(s)")
    if not parsed.host or (port is not None and not 0 < port < 65536):
        raise ConfigError(f"{kind} alert channel: url {url!r} needs a host and a port in 1..65535")
    return url


def hide_url(url: str, mask: str = "********") -> str:
    """Return `url` with its userinfo (user:password@), its path and each query value replaced
    by `mask`, to name a channel in logs and answers without its credentials: a chat webhook
    (`/services/T0/B0/<token>`) or an SMS gateway (`/send/<api key>`) keeps its key in the path.
    Scheme, host, port and the query's parameter names stay."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return mask  # not a URL we can take apart: it may hold anything
    netloc = parts.netloc
    if "@" in netloc:
        netloc = f"{mask}@{netloc.rpartition('@')[2]}"
    path = parts.path if parts.path in ("", "/") else f"/{mask}"
    query = "&".join(
        f"{item.partition('=')[0]}={mask}" if "=" in item else (mask if item else item)
        for item in parts.query.split("&")
    )
    fragment = mask if parts.fragment else ""
    return urlunsplit((parts.scheme, netloc, path, query if parts.query else "", fragment))


class Channel:
    """A way to notify people; subclasses set `kind` and implement from_config and send."""

    kind: ClassVar[str] = ""

    @classmethod
    def from_config(
        cls, config: dict[str, Any], *, alarm: Callable[[Notice], None] | None = None
    ) -> Channel:
        raise NotImplementedError

    async def send(self, notice: Notice) -> None:
        """Deliver one notice. Raises AlertDeliveryFailed."""
        raise NotImplementedError
