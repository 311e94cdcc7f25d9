"""E-mail alerts over SMTP (aiosmtplib): STARTTLS and login, certificates always verified."""

from __future__ import annotations

import ssl
from collections.abc import Callable
from email.message import EmailMessage
from typing import Any

import aiosmtplib

from relaysync.errors import AlertDeliveryFailed, ConfigError
from relaysync.monitor.alerts.base import Channel, Notice, require

SMTP_TIMEOUT_S = 15.0  # connect, STARTTLS, AUTH and DATA together


class EmailChannel(Channel):
    """config: host, port (587), starttls (true), username, password, sender, recipients,
    ca_pem (extra CA to trust, PEM text; default: the system's), timeout_s."""

    kind = "email"

    def __init__(
        self,
        *,
        host: str,
        port: int,
        starttls: bool,
        username: str,
        password: str,
        sender: str,
        recipients: list[str],
        ca_pem: str,
        timeout_s: float,
    ) -> None:
        self.host, self.port, self.starttls = host, port, starttls
        self.username, self.password = username, password
        self.sender, self.recipients = sender, recipients
        self.ca_pem, self.timeout_s = ca_pem, timeout_s

    @classmethod
    def from_config(
        cls, config: dict[str, Any], *, alarm: Callable[[Notice], None] | None = None
    ) -> Channel:
        recipients = require(config, "recipients", "email")
        if isinstance(recipients, str):
            recipients = [recipients]
        if not isinstance(recipients, list) or not all(
            isinstance(r, str) and "@" in r for r in recipients
        ):
            raise ConfigError("email alert channel: recipients must be a list of addresses")
        try:
            port = int(config.get("port", 587))
            timeout_s = float(config.get("timeout_s", SMTP_TIMEOUT_S))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"email alert channel: {exc}") from exc
        return cls(
            host=str(require(config, "host", "email")),
            port=port,
            starttls=bool(config.get("starttls", True)),
            username=str(config.get("username", "")),
            password=str(config.get("password", "")),
            sender=str(require(config, "sender", "email")),
            recipients=recipients,
            ca_pem=str(config.get("ca_pem", "")),
            timeout_s=timeout_s,
        )

    def _tls_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context()
        if self.ca_pem:
            ctx.load_verify_locations(cadata=self.ca_pem)
        return ctx

    async def send(self, notice: Notice) -> None:
        message = EmailMessage()
        message["From"] = self.sender
        message["To"] = ", ".join(self.recipients)
        message["Subject"] = notice.subject()
        message.set_content(notice.text())
        try:
            await aiosmtplib.send(
                message,
                hostname=self.host,
                port=self.port,
                start_tls=self.starttls,
                use_tls=False,
                tls_context=self._tls_context() if self.starttls else None,
                username=self.username or None,
                password=self.password or None,
                timeout=self.timeout_s,
            )
        except (aiosmtplib.SMTPException, OSError, ssl.SSLError) as exc:
            raise AlertDeliveryFailed(f"email {self.host}:{self.port}", exc) from exc
