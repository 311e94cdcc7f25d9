"""Real receivers for alert notifications: an aiosmtpd SMTP server (STARTTLS, AUTH LOGIN) and an
HTTP server that records every request. Both on 127.0.0.1, each in its own thread."""

from __future__ import annotations

import http.server
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import trustme
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import AuthResult, LoginPassword

SMTP_USER, SMTP_PASSWORD = "alerts", "s3cret-pass"


def email_config(ca: trustme.CA, port: int, **extra: object) -> dict[str, object]:
    """An e-mail channel's settings for `smtp_server(ca, port)` (STARTTLS, the test login)."""
    return {
        "host": "127.0.0.1",
        "port": port,
        "starttls": True,
        "username": SMTP_USER,
        "password": SMTP_PASSWORD,
        "sender": "relaysync@example.test",
        "recipients": ["ops@example.test"],
        "ca_pem": ca.cert_pem.bytes().decode(),
        **extra,
    }


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Mailbox:
    messages: list[dict[str, Any]] = field(default_factory=list)
    auth_mechanisms: list[str] = field(default_factory=list)
    tls_sessions: list[bool] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802 - aiosmtpd's name
        with self.lock:
            self.messages.append(
                {
                    "from": envelope.mail_from,
                    "to": list(envelope.rcpt_tos),
                    "data": envelope.content.decode(errors="replace"),
                }
            )
            self.tls_sessions.append(session.ssl is not None)
        return "250 OK"


@contextmanager
def smtp_server(ca: trustme.CA, port: int = 0) -> Iterator[tuple[Mailbox, int]]:
    """An SMTP server requiring STARTTLS before AUTH LOGIN, with a certificate from `ca`, on
    `port` (a free one if 0)."""
    box = Mailbox()
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)

    def authenticator(
        server: Any, session: Any, envelope: Any, mechanism: str, data: Any
    ) -> AuthResult:
        box.auth_mechanisms.append(mechanism)
        ok = (
            isinstance(data, LoginPassword)
            and data.login == SMTP_USER.encode()
            and data.password == SMTP_PASSWORD.encode()
        )
        return AuthResult(success=ok, handled=False)

    port = port or free_port()
    controller = Controller(
        box,
        hostname="127.0.0.1",
        port=port,
        tls_context=ctx,
        require_starttls=True,
        authenticator=authenticator,
        auth_required=True,
        auth_require_tls=True,
        auth_exclude_mechanism=["PLAIN"],
    )
    controller.start()
    try:
        yield box, port
    finally:
        controller.stop()


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.time)  # when the request had arrived (unix time)


@contextmanager
def http_receiver() -> Iterator[tuple[list[Recorded], str]]:
    """An HTTP server answering 200 to everything and recording each request; yields (log, base URL)."""
    log: list[Recorded] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def _record(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            log.append(
                Recorded(
                    self.command,
                    self.path,
                    dict(self.headers.items()),
                    self.rfile.read(length) if length else b"",
                )
            )
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        do_GET = do_POST = do_PUT = _record  # noqa: N815 - http.server's names

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield log, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


@contextmanager
def tcp_service(port: int) -> Iterator[None]:
    """A TCP service on `port` that is up: it accepts each connection and closes it."""
    server = socket.create_server(("127.0.0.1", port))

    def serve() -> None:
        while True:
            try:
                conn, _ = server.accept()
            except OSError:  # closed: the service went down
                return
            conn.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(5)
