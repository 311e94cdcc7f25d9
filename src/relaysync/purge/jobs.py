"""Purge work as values: an item to do on one cache, its queued form, and its outcome."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Action = Literal["refresh", "purge", "ban"]
ACTIONS: tuple[str, ...] = ("refresh", "purge", "ban")


@dataclass(frozen=True, slots=True, kw_only=True)
class PurgeItem:
    """Make `cache` of `site_id` drop or refresh `url` (for "ban": every URL under it)."""

    site_id: int
    cache: str
    url: str
    action: Action = "refresh"


@dataclass(frozen=True, slots=True, kw_only=True)
class QueuedPurge:
    """A PurgeItem as the durable queue holds it."""

    id: int
    item: PurgeItem
    attempts: int
    next_at: float  # unix time of the next try


@dataclass(frozen=True, slots=True, kw_only=True)
class PurgeResult:
    """What one try did: the row the purge log gets."""

    item: PurgeItem
    status: str  # refreshed | purged | not_cached | banned | refused | failed | stale (recheck.py)
    confirmed: bool | None  # None: no origin to compare with (or a ban)
    attempts: int
    at: float
    duration_ms: float
    detail: str = ""


@dataclass(frozen=True, slots=True, kw_only=True)
class Retry:
    """A failed try: when to try again and why it failed."""

    id: int
    attempts: int
    next_at: float
    error: str
