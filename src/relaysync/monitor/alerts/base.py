"""What every alert channel shares: the notice it sends and the Channel interface.

A notice's names and message come from the fleet and its operators (a probe's name, the error a
probe met, a server's name): the text a channel writes (an e-mail's subject and body, an SMS
template's fields) shows them on one line, control characters as escapes, cut to
MAX_FIELD_CHARS. A newline in a probe's name forged lines in an SMS or an e-mail body, and in an
e-mail subject or a gateway's header it failed every delivery of the alert.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar
from urllib.parse import urlsplit, urlunsplit

import httpx

from relaysync._util.untrusted_text import visible
from relaysync.errors import ConfigError

# A name or message as a channel's text shows it: longer is cut, marked "…". An SMS holds 160
# characters; a message with a long probe name and its error still reads whole within this.
MAX_FIELD_CHARS = 200


def shown(text: str, max_chars: int = MAX_FIELD_CHARS) -> str:
    """`text` fit for one line of a notification: control characters, line separators and
    bidirectional controls as visible escapes (`\x0a`, `\u202e`), cut to `max_chars`."""
    text = visible(text)
    return text if len(text) <= max_chars else text[: max_chars - 1] + "…"


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
        """The placeholders a template may use, as text, each shown on one line (`shown`)."""
        value = "" if self.value is None else f"{self.value:g}"
        return {
            "alert_id": str(self.alert_id),
            "server": shown(self.server),
            "metric": shown(self.metric),
            "value": value,
            "state": shown(self.state),
            "message": shown(self.message),
        }

    def subject(self) -> str:
        f = self.fields()
        return f"[relaysync] {f['state'].upper()}: {f['server']} {f['metric']}"

    def text(self) -> str:
        f = self.fields()
        value = f" (value {f['value']})" if f["value"] else ""
        return (
            f"{f['state']}: {f['message']}{value}\nserver: {f['server']}\nalert: {f['alert_id']}\n"
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
