"""The event bus: typed events with increasing ids, kept in a ring, read by id or by long-poll.

The UI and API read the master's state changes from here (`GET /api/events?since=N`), not from
logs. publish() may be called from any thread (store calls run in worker threads); waiters on any
event loop are woken.
"""

from __future__ import annotations

import asyncio
import enum
import itertools
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger(__name__)

DEFAULT_CAPACITY = 10_000  # events kept in memory; a reader further behind misses the oldest
MAX_EVENTS_PER_READ = 1_000  # one read returns at most this many events


class EventType(enum.StrEnum):
    """What happened; the value is what the API shows."""

    SERVER_JOINED = "server_joined"
    SERVER_UP = "server_up"
    SERVER_DOWN = "server_down"
    SERVER_CHANGED = "server_changed"
    SERVER_REMOVED = "server_removed"
    SERVER_REVOKED = "server_revoked"  # its certificate refused; still named by mappings
    MAPPING_CREATED = "mapping_created"
    MAPPING_CHANGED = "mapping_changed"
    MAPPING_DELETED = "mapping_deleted"
    ASSIGNMENT_ACKED = "assignment_acked"
    COMMIT_FAILED = "commit_failed"
    TARGET_CAUGHT_UP = "target_caught_up"
    TOKEN_CREATED = "token_created"
    TOKEN_REVOKED = "token_revoked"  # kind and id (a hash prefix or row id), never the token
    PURGE_REFUSED = "purge_refused"  # a cache refused a purge (403/405): fix its configuration
    PURGE_FAILED = (
        "purge_failed"  # a purge the cache answered but never did: given up after max attempts
    )
    # A cache did not connect or answer TRIP_AFTER times in a row (purge/gates.py): its purges
    # wait and are probed now and then, the cache may serve old copies meanwhile
    CACHE_UNREACHABLE = "cache_unreachable"
    CACHE_REACHABLE = "cache_reachable"  # it answers again: its waiting purges go on
    PURGER_FAILING = (
        "purger_failing"  # an unexpected error (a bug) in the purger: retried with backoff
    )
    # --- Monitoring ---
    ALERT_FIRING = "alert_firing"
    ALERT_RESOLVED = "alert_resolved"
    ALERT_ACKNOWLEDGED = "alert_acknowledged"
    ALARM = "alarm"  # a console alert channel's notice, for the web console
    SERVER_HEALTH = "server_health"  # a server became ok or unhealthy (the planner skips those)
    MASS_DELETE_HELD = (
        "mass_delete_held"  # a source folder vanished or emptied: deletes held for the operator
    )
    MASS_DELETE_ENDED = "mass_delete_ended"  # a hold is over (`reason`: paths back, mapping removed, confirmed, ...)
    # A mapping's source cannot run (its folder missing, refused, unreadable...): `error`, `since`
    # (master/source_failures.py); published again only when the reason changes.
    SOURCE_FAILING = "source_failing"
    SOURCE_FAILURE_ENDED = "source_failure_ended"  # it runs again (or is no longer that agent's)
    # --- Relay routes (master/router.py) ---
    ROUTE_CHANGED = (
        "route_changed"  # a mapping's distribution tree was re-planned: which hops and why
    )
    HOP_FAILED = (
        "hop_failed"  # a parent could not stream to a child twice: the hop is avoided for a while
    )
    TARGET_FAILED = (
        "target_failed"  # unreachable longer than fail_after_s: left out until it recovers
    )
    RECOVERY_STARTED = (
        "recovery_started"  # a failed target is back in the mapping (at once, reserved, manual)
    )
    TARGET_RECOVERED = "target_recovered"  # its watermark caught up with the other targets'
    # --- N:M jobs (master/store/_nmjobs.py) ---
    NM_JOB_CREATED = "nm_job_created"
    NM_JOB_DELETED = "nm_job_deleted"
    CONFLICT = "conflict"  # two sources of a job wrote one path: job, path, winner and loser source


@dataclass(frozen=True, slots=True)
class Event:
    id: int  # increasing from 1, never reused while the master runs
    type: EventType
    time: float  # unix time
    data: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Return the event as the API sends it."""
        return {"id": self.id, "type": self.type.value, "time": self.time, "data": self.data}


class EventBus:
    """An in-memory ring of the last `capacity` events."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"event bus capacity {capacity} must be at least 1")
        self._events: deque[Event] = deque(maxlen=capacity)
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._waiters: set[tuple[asyncio.AbstractEventLoop, asyncio.Event]] = set()

    @property
    def last_id(self) -> int:
        """The id of the newest event, 0 if none."""
        with self._lock:
            return self._events[-1].id if self._events else 0

    def publish(self, type: EventType, **data: Any) -> Event:
        """Record an event and wake every long-poll waiter."""
        with self._lock:
            event = Event(next(self._ids), EventType(type), time.time(), data)
            self._events.append(event)
            waiters = list(self._waiters)
        logger.debug("event", extra={"event_id": event.id, "event_type": event.type.value})
        for loop, waiter in waiters:
            _wake(loop, waiter)
        return event

    def since(self, event_id: int, limit: int = MAX_EVENTS_PER_READ) -> list[Event]:
        """Return up to `limit` events with an id above `event_id`, oldest first.

        An id above the newest one comes from before a master restart (ids start again at 1):
        such a reader gets everything from the oldest event kept.
        """
        limit = max(1, min(limit, MAX_EVENTS_PER_READ))
        with self._lock:
            if not self._events or event_id == self._events[-1].id:
                return []
            if event_id > self._events[-1].id:
                event_id = 0
            start = max(0, event_id - self._events[0].id + 1)  # ids in the ring are consecutive
            return list(itertools.islice(self._events, start, start + limit))

    async def wait_since(
        self, event_id: int, timeout_s: float, limit: int = MAX_EVENTS_PER_READ
    ) -> list[Event]:
        """Return events after `event_id`, waiting up to `timeout_s` for one; [] on timeout."""
        events = self.since(event_id, limit)
        if events or timeout_s <= 0:
            return events
        entry = (asyncio.get_running_loop(), asyncio.Event())
        with self._lock:
            self._waiters.add(entry)
        try:
            events = self.since(event_id, limit)  # one may have landed before we registered
            if not events:
                try:
                    await asyncio.wait_for(entry[1].wait(), timeout_s)
                except TimeoutError:
                    return []
                events = self.since(event_id, limit)
            return events
        finally:
            with self._lock:
                self._waiters.discard(entry)


def _wake(loop: asyncio.AbstractEventLoop, waiter: asyncio.Event) -> None:
    try:
        running = asyncio.get_running_loop()
    except RuntimeError:
        running = None
    if running is loop:
        waiter.set()
        return
    try:
        loop.call_soon_threadsafe(waiter.set)
    except RuntimeError:  # that loop has closed; its waiter is gone with it
        pass
