"""Job-log statistics: files, bytes, failures and latency percentiles by server, group, region, mapping or day.

Sources, all in the store: `watermark_advances` (per target and report: files committed, bytes on
the wire, summed transfer durations, summed source-to-target latencies), `exceptions` (per failed change and target: attempts) and
`changes` (per change of a source: its size). Rows are folded in Python rather than with
dialect-specific SQL (percentile_cont, date_trunc), so the figures are identical on SQLite and
PostgreSQL; the `since` bound keeps the scan to the period asked for.

Error handling: a bad `by` raises ConfigError; database failures raise StoreError.
Resource handling: every call runs one read transaction from the Store's session factory.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from relaysync.errors import ConfigError
from relaysync.master.store._joblog import ADVANCES, EXCEPTIONS
from relaysync.master.store._joblog_changes import CHANGES
from relaysync.master.store.models import Mapping, Server

SessionFn = Callable[[str], AbstractContextManager[Session]]
GROUP_BY = ("server", "group", "region", "mapping", "day")
DAY_S = 86_400
PERCENTILES = (50, 95, 99)
FETCH_ROWS = 10_000  # rows fetched per round trip while folding


@dataclass(frozen=True, slots=True, kw_only=True)
class StatRow:
    """The figures of one group (one server, group, region, mapping or UTC day)."""

    key: str  # the server's, group's, region's or mapping's name, or the day as YYYY-MM-DD
    files: int  # changes committed on targets (a file sent to two targets counts twice)
    wire_bytes: int  # bytes on the wire to the targets
    failures: int  # failed (change, target) pairs, resolved since or not
    failed_attempts: int  # attempts of those, retries included
    open_failures: int  # failures not yet resolved
    changes: int | None  # changes the sources reported (by mapping and day only)
    change_bytes: int | None  # their sizes
    file_ms_p50: float | None  # transfer time per committed file on its target, percentiles
    file_ms_p95: float | None
    file_ms_p99: float | None
    latency_ms_p50: float | None = (
        None  # source journaled -> target committed, per file, percentiles
    )
    latency_ms_p95: float | None = None
    latency_ms_p99: float | None = None


@dataclass
class _Acc:
    files: int = 0
    wire_bytes: int = 0
    failures: int = 0
    failed_attempts: int = 0
    open_failures: int = 0
    changes: int = 0
    change_bytes: int = 0
    durations: list[tuple[float, int]] = field(default_factory=list)  # (ms per file, files)
    latencies: list[tuple[float, int]] = field(default_factory=list)  # (ms per file, files)

    def row(self, key: str, *, with_changes: bool) -> StatRow:
        p50, p95, p99 = (weighted_percentile(self.durations, p) for p in PERCENTILES)
        l50, l95, l99 = (weighted_percentile(self.latencies, p) for p in PERCENTILES)
        return StatRow(
            key=key,
            files=self.files,
            wire_bytes=self.wire_bytes,
            failures=self.failures,
            failed_attempts=self.failed_attempts,
            open_failures=self.open_failures,
            changes=self.changes if with_changes else None,
            change_bytes=self.change_bytes if with_changes else None,
            file_ms_p50=p50,
            file_ms_p95=p95,
            file_ms_p99=p99,
            latency_ms_p50=l50,
            latency_ms_p95=l95,
            latency_ms_p99=l99,
        )


def weighted_percentile(values: Iterable[tuple[float, int]], percentile: float) -> float | None:
    """Nearest-rank percentile of values given as (value, count); None when there are none."""
    ordered = sorted((v, n) for v, n in values if n > 0)
    total = sum(n for _, n in ordered)
    if total == 0:
        return None
    rank = max(1, math.ceil(percentile / 100 * total))
    seen = 0
    for value, n in ordered:
        seen += n
        if seen >= rank:
            return round(value, 3)
    return round(ordered[-1][0], 3)


def day_of(unix_s: float) -> str:
    """The UTC day of a unix time, as YYYY-MM-DD."""
    return time.strftime("%Y-%m-%d", time.gmtime(unix_s))


class StatsStore:
    """Read-only statistics over the job log."""

    def __init__(self, read: SessionFn) -> None:
        self._read = read

    def stats(
        self, *, by: str = "mapping", since: float | None = None, until: float | None = None
    ) -> list[StatRow]:
        """Return the figures per `by` group over [since, until), sorted by key.

        Args:
            by: server, group or region (of the target), mapping, or day (UTC).
            since, until: unix times; None = unbounded.

        Raises:
            ConfigError: an unknown `by`.
        """
        if by not in GROUP_BY:
            raise ConfigError(f"statistics by {by!r}: use one of {', '.join(GROUP_BY)}")
        with self._read("statistics") as session:
            keys = _Keys(session, by)
            groups: dict[str, _Acc] = {}
            _fold_advances(session, keys, groups, since, until)
            _fold_exceptions(session, keys, groups, since, until)
            if by in ("mapping", "day"):
                _fold_changes(session, keys, groups, since, until)
        return [groups[k].row(k, with_changes=by in ("mapping", "day")) for k in sorted(groups)]


class _Keys:
    """Names a job-log row's group: the target server's name, group or region, the mapping, the day."""

    def __init__(self, session: Session, by: str) -> None:
        self.by = by
        self._servers = {s.node_id: s for s in session.scalars(select(Server))}
        self._mappings: dict[int, str] = {
            i: n for i, n in session.execute(select(Mapping.id, Mapping.name))
        }

    def of(self, mapping_id: int, target_node: str | None, at: float) -> str:
        if self.by == "day":
            return day_of(at)
        if self.by == "mapping":
            return self._mappings.get(mapping_id, f"#{mapping_id}")
        server = self._servers.get(target_node or "")
        if server is None:
            return (target_node or "")[:12]  # a server forgotten since; its node id prefix
        return {"server": server.name, "group": server.group_name, "region": server.region}[self.by]


def _bounded(query: Any, column: Any, since: float | None, until: float | None) -> Any:
    if since is not None:
        query = query.where(column >= since)
    if until is not None:
        query = query.where(column < until)
    return query


def _fold_advances(
    session: Session, keys: _Keys, groups: dict[str, _Acc], since: float | None, until: float | None
) -> None:
    a = ADVANCES.c
    query = _bounded(
        select(
            a.mapping_id,
            a.target_node,
            a.at,
            a.files,
            a.wire_bytes,
            a.duration_ms,
            a.latency_ms,
            a.latency_files,
        ),
        a.at,
        since,
        until,
    )
    for mapping_id, target, at, files, wire_bytes, duration_ms, latency_ms, latency_files in _rows(
        session, query
    ):
        acc = groups.setdefault(keys.of(mapping_id, target, at), _Acc())
        acc.files += int(files)
        acc.wire_bytes += int(wire_bytes)
        if files:
            acc.durations.append((float(duration_ms) / files, int(files)))
        if latency_files:  # a report's files share its mean, like the transfer times
            acc.latencies.append((float(latency_ms) / latency_files, int(latency_files)))


def _fold_exceptions(
    session: Session, keys: _Keys, groups: dict[str, _Acc], since: float | None, until: float | None
) -> None:
    e = EXCEPTIONS.c
    query = _bounded(
        select(e.mapping_id, e.target_node, e.at, e.attempts, e.resolved_at), e.at, since, until
    )
    for mapping_id, target, at, attempts, resolved_at in _rows(session, query):
        acc = groups.setdefault(keys.of(mapping_id, target, at), _Acc())
        acc.failures += 1
        acc.failed_attempts += int(attempts)
        acc.open_failures += resolved_at is None


def _fold_changes(
    session: Session, keys: _Keys, groups: dict[str, _Acc], since: float | None, until: float | None
) -> None:
    c = CHANGES.c
    query = _bounded(select(c.mapping_id, c.reported_at, c.size), c.reported_at, since, until)
    for mapping_id, reported_at, size in _rows(session, query):
        acc = groups.setdefault(keys.of(mapping_id, None, reported_at), _Acc())
        acc.changes += 1
        acc.change_bytes += int(size or 0)


def _rows(session: Session, query: Any) -> Iterable[Any]:
    return session.execute(query.execution_options(yield_per=FETCH_ROWS))
