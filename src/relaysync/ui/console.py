"""The console's routes: `/` (the page) and `/ui/*` (its modules and style), with strict headers.

The console is a client of the REST API: its files need no token (they hold no data), every
call they make carries the operator's token in `Authorization: Bearer`. Nothing here imports
the master: the app that serves it calls `mount_console`.

Error handling:
    A file not in the package is a plain 404 (Starlette's StaticFiles), with the same headers.

Resource handling:
    Files are read from the package directory per request; nothing is held open.
"""

from __future__ import annotations

import logging
from pathlib import Path

from fastapi import FastAPI
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

logger = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).parent / "static"
CONSOLE_PREFIX = "/ui/"  # the modules and style sheet; "/" is the page

# The console runs only its own modules and style sheet and talks only to this origin: an
# injected tag can neither run a script (inline or from elsewhere) nor send data anywhere.
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "connect-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
CONSOLE_HEADERS: tuple[tuple[str, str], ...] = (
    ("content-security-policy", CONTENT_SECURITY_POLICY),
    ("x-frame-options", "DENY"),
    ("x-content-type-options", "nosniff"),
    ("referrer-policy", "no-referrer"),
    ("cache-control", "no-cache"),  # revalidated: an upgraded master serves its own console
)


def is_console_path(path: str) -> bool:
    """Whether a request path is the console's (not the API's, /openapi.json or /metrics)."""
    return path == "/" or path.startswith(CONSOLE_PREFIX)


class ConsoleHeaders:
    """ASGI middleware: the console's responses get CONSOLE_HEADERS (replacing any of theirs).

    Only console paths: the API's answers are JSON (or CSV, or /metrics' text), never run.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not is_console_path(scope["path"]):
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                names = {name.encode() for name, _ in CONSOLE_HEADERS}
                kept = [(k, v) for k, v in message.get("headers", []) if k.lower() not in names]
                added = [(k.encode(), v.encode()) for k, v in CONSOLE_HEADERS]
                message = {**message, "headers": kept + added}
            await send(message)

        await self.app(scope, receive, send_with_headers)


async def console_page() -> FileResponse:
    """The console's single page; it loads /ui/console.js, which asks for a token."""
    return FileResponse(STATIC_DIR / "index.html", media_type="text/html; charset=utf-8")


def mount_console(app: FastAPI) -> None:
    """Serve the console from `app`: the page at `/`, its files under `/ui/`, no token needed."""
    app.add_api_route("/", console_page, methods=["GET"], include_in_schema=False)
    app.mount(CONSOLE_PREFIX.rstrip("/"), StaticFiles(directory=STATIC_DIR), name="console")
    app.add_middleware(ConsoleHeaders)
