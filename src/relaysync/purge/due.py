"""One pass of the purge workers over the queue: the due items filed by cache (its gate) and by
(URL, action), oldest first, and when the next item falls due.

Oldest first: queue ids grow, and the queue (a dict) is kept in id order. A retried item keeps
its id but was put back at the dict's end, behind everything queued while it ran: during a
deploy's backlog of thousands it waited for all of them, its cache serving the old copy
meanwhile, although it was the stalest URL. `in_id_order` sorts the queue again before a pass
when something was added out of order (a retry, or the ids of concurrent queue writes, which
PostgreSQL may return out of order); the dict is nearly sorted, so that is close to one walk.

Moved out of purge/worker.py, which dispatches what a pass files.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

from relaysync.purge.gates import Gate
from relaysync.purge.jobs import QueuedPurge

UrlKey = tuple[int, str, str]  # (site id, cache name, url)
DueKey = tuple[UrlKey, str]  # (url key, action): the items of one group
Due = dict[str, dict[DueKey, list[QueuedPurge]]]  # gate key -> its groups, oldest first


@dataclass
class DuePass:
    """What one pass found: the due groups per gate, when the next item falls due, and every
    URL with an item queued (rechecks leave those be)."""

    due: Due = field(default_factory=dict)
    next_at: float = math.inf
    pending: set[UrlKey] = field(default_factory=set)


def file_due(
    queue: dict[int, QueuedPurge],
    busy: set[UrlKey],
    now: float,
    gate_key: Callable[[int, str], str],
    gate: Callable[[str], Gate],
) -> DuePass:
    """File the due items of `queue` (in its order) by gate and group. The items of a cache whose
    gate can take none now are not filed (a down cache's backlog costs a lookup per item); its
    probe time counts for `next_at`. Items of a URL with a try in flight (`busy`) wait for it."""
    out = DuePass(next_at=now + 1.0)
    gate_keys: dict[tuple[int, str], str] = {}
    shut: dict[str, bool] = {}  # gates that can take nothing now
    for q in queue.values():
        url_key = (q.item.site_id, q.item.cache, q.item.url)
        out.pending.add(url_key)
        if url_key in busy:
            continue
        if q.next_at > now:
            out.next_at = min(out.next_at, q.next_at)
            continue
        cache_key = (q.item.site_id, q.item.cache)
        key = gate_keys.get(cache_key)
        if key is None:
            key = gate_keys[cache_key] = gate_key(*cache_key)
        if key not in shut:
            shut[key] = not gate(key).can_admit(now)
            if shut[key]:
                out.next_at = min(out.next_at, probe_due(gate(key), now))
        if not shut[key]:
            add_due(out.due, key, url_key, q)
    return out


def add_due(due: Due, gate_key: str, url_key: UrlKey, q: QueuedPurge) -> None:
    """File `q` under its cache's gate, grouped by (site, cache, URL, action), in order."""
    due.setdefault(gate_key, {}).setdefault((url_key, q.item.action), []).append(q)


def probe_due(gate: Gate, now: float) -> float:
    """When a gate with due items lets one through later: an open gate at its probe time; a
    closed (full) one when a try ends, which wakes the loop (inf here: it said now, and the loop
    went round without waiting while the gate was full)."""
    return gate.probe_at if gate.open and gate.probe_at > now else math.inf


def in_id_order(queue: dict[int, QueuedPurge]) -> None:
    """Put `queue` back in id order, in place (others hold the same dict)."""
    items = sorted(queue.items())  # by id: ids are unique, no item is ever compared
    queue.clear()
    queue.update(items)
