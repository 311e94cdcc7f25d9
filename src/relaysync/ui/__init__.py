"""The web console: static pages that call the REST API only, served by the master's ASGI app."""

from relaysync.ui.console import CONSOLE_HEADERS, STATIC_DIR, ConsoleHeaders, mount_console

__all__ = ["CONSOLE_HEADERS", "STATIC_DIR", "ConsoleHeaders", "mount_console"]
