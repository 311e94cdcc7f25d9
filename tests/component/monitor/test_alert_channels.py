"""Alert channels against real receivers: aiosmtpd with STARTTLS and AUTH LOGIN, an HTTP server."""

from __future__ import annotations

import json

import anyio
import pytest
import trustme
from tests._monitor_receivers import (
    email_config,
    free_port,
    http_receiver,
    smtp_server,
)

from relaysync.errors import AlertDeliveryFailed, ConfigError
from relaysync.monitor.alerts import Notice, build_channel

NOTICE = Notice(
    alert_id=7,
    server="web1",
    metric="cpu_percent",
    value=97.5,
    state="firing",
    message="cpu_percent > 90 on web1",
    at=1_700_000_000.0,
)


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


def test_email_over_starttls_with_login(ca: trustme.CA) -> None:
    with smtp_server(ca) as (box, port):
        channel = build_channel("email", email_config(ca, port))
        anyio.run(channel.send, NOTICE)
    [message] = box.messages
    assert message["to"] == ["ops@example.test"]
    assert "Subject: [relaysync] FIRING: web1 cpu_percent" in message["data"]
    assert "value 97.5" in message["data"]
    assert box.auth_mechanisms == ["LOGIN"] and box.tls_sessions == [True]


def test_email_refuses_an_untrusted_certificate(ca: trustme.CA) -> None:
    other = trustme.CA()
    with smtp_server(ca) as (box, port):
        channel = build_channel("email", email_config(other, port))
        with pytest.raises(AlertDeliveryFailed, match="could not deliver"):
            anyio.run(channel.send, NOTICE)
    assert box.messages == []


def test_email_wrong_password_fails(ca: trustme.CA) -> None:
    with smtp_server(ca) as (box, port):
        channel = build_channel("email", email_config(ca, port, password="wrong"))
        with pytest.raises(AlertDeliveryFailed):
            anyio.run(channel.send, NOTICE)
    assert box.messages == []


def test_webhook_posts_json() -> None:
    with http_receiver() as (log, url):
        channel = build_channel("webhook", {"url": url + "/hook", "headers": {"X-Token": "t"}})
        anyio.run(channel.send, NOTICE)
    [req] = log
    assert (req.method, req.path, req.headers["X-Token"]) == ("POST", "/hook", "t")
    body = json.loads(req.body)
    assert body["server"] == "web1" and body["value"] == 97.5 and body["state"] == "firing"


def test_sms_gateway_template_filled_in() -> None:
    template = '{"to": "+15550100", "text": "{state}: {server} {metric}={value}"}'
    with http_receiver() as (log, url):
        channel = build_channel(
            "sms",
            {
                "url": url + "/send?from=relaysync&srv={server}",
                "method": "POST",
                "body_template": template,
                "content_type": "application/json",
            },
        )
        anyio.run(channel.send, NOTICE)
    [req] = log
    assert req.path == "/send?from=relaysync&srv=web1"
    assert json.loads(req.body) == {"to": "+15550100", "text": "firing: web1 cpu_percent=97.5"}
    assert req.headers["Content-Type"] == "application/json"


def test_sms_url_values_are_encoded() -> None:
    notice = Notice(
        alert_id=1, server="a b&c", metric="m", value=None, state="resolved", message="", at=0.0
    )
    with http_receiver() as (log, url):
        channel = build_channel(
            "sms", {"url": url + "/s?to=1&msg={server}+{state}", "method": "GET"}
        )
        anyio.run(channel.send, notice)
    assert log[0].path == "/s?to=1&msg=a%20b%26c+resolved" and log[0].method == "GET"


def test_unreachable_webhook_is_a_delivery_failure() -> None:
    channel = build_channel("webhook", {"url": f"http://127.0.0.1:{free_port()}/"})
    with pytest.raises(AlertDeliveryFailed):
        anyio.run(channel.send, NOTICE)


def test_console_raises_an_alarm() -> None:
    got: list[Notice] = []
    channel = build_channel("console", {}, alarm=got.append)
    anyio.run(channel.send, NOTICE)
    assert got == [NOTICE]


@pytest.mark.parametrize(
    ("kind", "config", "match"),
    [
        ("pager", {}, "kind"),
        ("email", {"host": "h", "sender": "s@x"}, "recipients"),
        ("email", {"host": "h", "sender": "s@x", "recipients": ["nobody"]}, "recipients"),
        ("webhook", {"url": "ftp://x"}, "http"),
        ("webhook", {"url": "http://127.0.0.1:99999/hook"}, "port"),
        ("webhook", {"url": "http://[::1/hook"}, "port"),
        ("sms", {"url": "http://gw.example/s?x\x00"}, "url"),
        ("sms", {"url": "http://x", "method": "DELETE"}, "method"),
    ],
)
def test_bad_configs_are_refused(kind: str, config: dict[str, object], match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_channel(kind, config, alarm=lambda n: None)
