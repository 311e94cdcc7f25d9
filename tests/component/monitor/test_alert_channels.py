"""Alert channels against real receivers: aiosmtpd with STARTTLS and AUTH LOGIN, an HTTP server."""

from __future__ import annotations

import email
import email.policy
import json
from email.message import EmailMessage

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
from relaysync.monitor.alerts.base import MAX_FIELD_CHARS
from relaysync.monitor.alerts.sms import SmsChannel

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


# A probe's name is any text an API client gives: one with a newline and quotes, and a long error.
HOSTILE = Notice(
    alert_id=3,
    server="web1",
    metric='p\r\nBcc: evil@example.test\r\nX-Forged: "y',
    value=None,
    state="firing",
    message='tcp probe p", "to": "+19990000000\nserver: web9 ' + "A" * 5000,
    at=1_700_000_000.0,
)


def test_email_shows_a_hostile_name_on_its_one_subject_line(ca: trustme.CA) -> None:
    """A newline in a probe's name made EmailMessage refuse the subject (ValueError): the notice
    was dropped as a channel's bug, for every change of the alert. Now the subject and the body
    show it as escapes; no header and no line of the body is forged, and the message is cut."""
    with smtp_server(ca) as (box, port):
        channel = build_channel("email", email_config(ca, port))
        anyio.run(channel.send, HOSTILE)
    [message] = box.messages
    assert message["to"] == ["ops@example.test"]
    got = email.message_from_string(message["data"], policy=email.policy.default)
    assert isinstance(got, EmailMessage)
    assert sorted(got.keys()) == [
        "Content-Transfer-Encoding",
        "Content-Type",
        "From",
        "MIME-Version",
        "Subject",
        "To",
    ]
    assert got["Subject"].strip() == (  # folded: the line after "Subject:" starts with a space
        r'[relaysync] FIRING: web1 p\x0d\x0aBcc: evil@example.test\x0d\x0aX-Forged: "y'
    )
    lines = got.get_content().splitlines()
    assert lines[0].startswith(r'firing: tcp probe p", "to": "+19990000000\x0aserver: web9 AAA')
    assert lines[0].endswith("A…") and len(lines[0]) == len("firing: ") + MAX_FIELD_CHARS
    assert lines[1:] == ["server: web1", "alert: 3"]


def test_sms_json_body_keeps_a_hostile_message_inside_its_string() -> None:
    """Filled in as it was, a message holding `", "to": "+1..."` added a second recipient to a
    JSON body (and a newline made the JSON invalid); now it stays inside its string, on one
    line, cut to MAX_FIELD_CHARS."""
    with http_receiver() as (log, url):
        channel = build_channel(
            "sms",
            {
                "url": url + "/send",
                "body_template": '{"to": "+15550100", "text": "{state}: {message}"}',
                "content_type": "application/json; charset=utf-8",
            },
        )
        anyio.run(channel.send, HOSTILE)
    body = json.loads(log[0].body)
    assert set(body) == {"to", "text"} and body["to"] == "+15550100"
    assert body["text"].startswith(r'firing: tcp probe p", "to": "+19990000000\x0aserver: web9 A')
    assert len(body["text"]) == len("firing: ") + MAX_FIELD_CHARS and body["text"].endswith("A…")


@pytest.mark.parametrize(
    ("content_type", "template", "expected"),
    [
        ("text/plain", "{state}: {message}", r"firing: tcp probe p\", \"to\""),
        ("", '{"text": "{message}"}', r'{"text": "tcp probe p\", \"to\"'),  # JSON, by its look
        ("application/x-www-form-urlencoded", "to=1&text={message}", "to=1&text=tcp+probe+p%22"),
    ],
)
def test_sms_body_values_are_quoted_for_the_body_and_forge_no_line(
    content_type: str, template: str, expected: str
) -> None:
    config = {"url": "http://127.0.0.1:1/s", "body_template": template}
    if content_type:
        config["content_type"] = content_type
    channel = build_channel("sms", config)
    assert isinstance(channel, SmsChannel)
    _, _, _, body = channel.request_of(HOSTILE)
    plain = expected.replace("\\", "") if content_type == "text/plain" else expected
    assert body.startswith(plain), body
    assert "\n" not in body and "\r" not in body


def test_sms_header_with_a_hostile_name_is_delivered() -> None:
    """A header value holding {metric} with a CR LF: the HTTP client refused the request, and
    the notice was retried for an hour and never delivered."""
    with http_receiver() as (log, url):
        channel = build_channel("sms", {"url": url + "/send", "headers": {"X-Alert": "{metric}"}})
        anyio.run(channel.send, HOSTILE)
    assert log[0].headers["X-Alert"] == r'p\x0d\x0aBcc: evil@example.test\x0d\x0aX-Forged: "y'
    assert "X-Forged" not in log[0].headers
