"""Running a long-lived service from the CLI: logging, signals, and errors as exit codes."""

from __future__ import annotations

import json
import logging
import signal
import sys
from collections.abc import Callable, Coroutine, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import anyio
import typer
from rich.console import Console
from rich.logging import RichHandler

from relaysync._util.memory import freeze_startup_heap, reuse_large_buffers
from relaysync._util.untrusted_text import visible
from relaysync.cli._shown import cell_lines
from relaysync.errors import ConfigError, RelaySyncError

err_console = Console(stderr=True)


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        data = {
            "time": record.created,
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            data["exc"] = self.formatException(record.exc_info)
        return json.dumps(data)


class _VisibleFormatter(logging.Formatter):
    """A log line whose message (file names, names and errors from the fleet) holds no control
    character or bidirectional control as itself (`_util/untrusted_text.visible`): a file name
    with ESC sequences rewrote the operator's terminal, one with a newline forged a log line.
    A traceback below it keeps its lines; their text (an error's message names a file) is made
    visible line by line."""

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 - logging's name
        return visible(super().formatMessage(record))

    def formatException(self, ei: Any) -> str:  # noqa: N802 - logging's name
        return _visible_lines(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:  # noqa: N802 - logging's name
        return _visible_lines(super().formatStack(stack_info))


def _visible_lines(text: str) -> str:
    return "\n".join(visible(line) for line in text.split("\n"))


def setup_logging(*, json_logs: bool, level: str = "INFO") -> None:
    handler: logging.Handler
    if json_logs:  # JSON escapes every control character itself
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_JsonFormatter())
    elif sys.stderr.isatty():
        handler = RichHandler(console=err_console, show_path=False, rich_tracebacks=False)
        handler.setFormatter(_VisibleFormatter("%(message)s"))
    else:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(_VisibleFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler], force=True)


def run_service(
    serve: Callable[..., Coroutine[Any, Any, Any]], on_started: Callable[[Any], None] | None = None
) -> None:
    """Run `serve` until SIGINT/SIGTERM; map relaysync errors to their exit codes."""

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                value = await tg.start(serve)
                freeze_startup_heap()
                if on_started is not None:
                    on_started(value)
                async for _ in signals:
                    tg.cancel_scope.cancel()
                    break

    reuse_large_buffers()
    try:
        anyio.run(main, backend_options={"use_uvloop": _has_uvloop()})
    except (RelaySyncError, BaseExceptionGroup) as exc:
        error = _first_relaysync_error(exc)
        if error is None:
            raise
        fail(error)


def fail(error: RelaySyncError) -> NoReturn:
    """Print `error` on one line of stderr (no traceback) and exit with its exit code. What it
    quotes (a file name, the master's `detail`) is shown with its control characters visible."""
    err_console.print(
        f"[red]error:[/red] {cell_lines(str(error))}", markup=True, highlight=False, soft_wrap=True
    )
    raise typer.Exit(error.exit_code) from error


@contextmanager
def errors_as_exit() -> Iterator[None]:
    """Around a service's start-up (its configuration): a relaysync error is `fail`ed."""
    try:
        yield
    except RelaySyncError as exc:
        fail(exc)


def check_data_dir(path: Path, option: str = "--data") -> None:
    """Refuse a data directory that is a file, or below one, before a service makes it.

    Raises:
        ConfigError: naming `option` and the file in the way.
    """
    existing = path
    try:
        while not existing.exists() and existing.parent != existing:
            existing = existing.parent
        usable = existing.is_dir()
    except OSError as exc:  # a directory on the way this user cannot search (EACCES)
        raise ConfigError(f"{option} {path} cannot be used: {exc.strerror or exc}") from exc
    if not usable:
        where = "is" if existing == path else f"is below {existing}, which is"
        raise ConfigError(f"{option} {path} {where} not a directory")


def _first_relaysync_error(exc: BaseException) -> RelaySyncError | None:
    if isinstance(exc, RelaySyncError):
        return exc
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            found = _first_relaysync_error(inner)
            if found is not None:
                return found
    return None


def _has_uvloop() -> bool:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return False
    return True
