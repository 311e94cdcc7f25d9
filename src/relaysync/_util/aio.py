"""Async helpers shared by the long-running links."""

from __future__ import annotations

from collections.abc import Iterator

import anyio

from relaysync.errors import RelaySyncError

# What a network session may end with; the link logs it and reconnects.
LINK_ERRORS: tuple[type[BaseException], ...] = (
    RelaySyncError,
    OSError,
    TimeoutError,
    anyio.EndOfStream,
    anyio.BrokenResourceError,
    anyio.ClosedResourceError,
)


def error_leaves(exc: BaseException) -> Iterator[BaseException]:
    """Every non-group exception inside nested exception groups (or exc itself)."""
    if isinstance(exc, BaseExceptionGroup):
        for inner in exc.exceptions:
            yield from error_leaves(inner)
    else:
        yield exc


def leaf_error(exc: BaseException) -> BaseException:
    """Return the first non-group exception inside nested exception groups (or exc itself)."""
    while isinstance(exc, BaseExceptionGroup):
        exc = exc.exceptions[0]
    return exc


def is_link_error(exc: BaseException) -> bool:
    """True if every leaf of exc is an expected link failure (not a bug, not a cancellation)."""
    if isinstance(exc, BaseExceptionGroup):
        return all(is_link_error(e) for e in exc.exceptions)
    return isinstance(exc, LINK_ERRORS)
