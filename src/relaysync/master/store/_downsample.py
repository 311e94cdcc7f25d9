"""Downsampling of the store's figures: raw figures folded into one-minute averages, old averages
dropped, batch by batch.

Each batch is a write transaction of its own over at most `batch_rows` rows, so that the other
writers of the master (control links, the job log, the API) get the store between batches
rather than wait behind one long transaction (on SQLite they fail after the 10 s busy timeout).
A batch of raw figures holds whole minutes of the series it folds (a minute is never split
into two averages of one series), and its rows are taken with DELETE ... RETURNING and averaged
from what that returned: no figure goes without being folded, even one written into the batch's
range meanwhile (PostgreSQL runs READ COMMITTED).

Error handling: database failures raise StoreError (through the Store's session factories);
batches committed before stay committed, and the next call goes on from there.
Resource handling: one transaction per batch, from the Store's write session factory.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import ColumnElement, Table, delete, func, insert, select
from sqlalchemy.orm import Session

from relaysync.master.store.models import MetricSampleRow

SessionFn = Callable[[str], AbstractContextManager[Session]]
SAMPLES: Table = MetricSampleRow.__table__  # type: ignore[assignment]
MINUTE_S = 60
# Rows per transaction: 0.1-0.25 s on SQLite here (5,000 raw rows folded; 10,000 took up to
# 0.4 s), far inside the 10 s busy timeout other writers wait.
DOWNSAMPLE_BATCH_ROWS = 5_000
# Between batches: a writer waiting on SQLite retries the lock after sleeps of at most 100 ms,
# so a shorter gap would mostly be missed and it could wait through the whole run.
DOWNSAMPLE_PAUSE_S = 0.15


def downsample(
    write: SessionFn,
    *,
    now: float,
    raw_retention_s: float,
    minute_retention_s: float,
    batch_rows: int = DOWNSAMPLE_BATCH_ROWS,
    pause_s: float = DOWNSAMPLE_PAUSE_S,
    between: Callable[[], None] = lambda: None,
) -> tuple[int, int]:
    """Fold every raw figure older than raw_retention_s into one-minute averages, then drop
    averages older than minute_retention_s, `batch_rows` rows per transaction at most (a minute
    of one server's figures is never split), `pause_s` apart. `between` runs before each batch
    and may raise to stop (the monitor passes anyio's check_cancelled). Returns (raw rows
    folded, averages dropped)."""
    folded = dropped = 0
    while True:
        between()
        if folded:
            time.sleep(pause_s)  # a worker thread's: the other writers take the lock meanwhile
        with write("downsample") as session:
            n = _fold_batch(session, now - raw_retention_s, batch_rows)
        if n == 0:
            break
        folded += n
    while True:
        between()
        if dropped:
            time.sleep(pause_s)
        with write("drop old averages") as session:
            n = _drop_batch(session, now - minute_retention_s, batch_rows)
        dropped += n
        if n < batch_rows:
            return folded, dropped


def _minute(at: float) -> float:
    return float(int(at // MINUTE_S) * MINUTE_S)


def _fold_batch(session: Session, cutoff: float, limit: int) -> int:
    """Fold the oldest raw figures before `cutoff` (a batch of _next_batch); return how many."""
    where = _next_batch(session, cutoff, limit)
    if where is None:
        return 0
    c = SAMPLES.c
    rows = sorted(  # summed in the order they were written, as always
        session.execute(
            delete(SAMPLES).where(*where).returning(c.id, c.server, c.name, c.labels, c.at, c.value)
        ),
        key=lambda r: int(r.id),
    )
    groups: dict[tuple[str, str, str, float], list[float]] = {}
    for r in rows:
        groups.setdefault((r.server, r.name, r.labels, _minute(r.at)), []).append(r.value)
    averages: list[dict[str, Any]] = [
        {
            "server": server,
            "name": name,
            "labels": labels,
            "at": minute,
            "value": sum(values) / len(values),
            "resolution_s": MINUTE_S,
        }
        for (server, name, labels, minute), values in groups.items()
    ]
    if averages:
        session.execute(insert(SAMPLES), averages)
    return len(rows)


def _next_batch(session: Session, cutoff: float, limit: int) -> list[ColumnElement[bool]] | None:
    """Return the WHERE of the next batch of raw figures before `cutoff`, or None if none is left.

    The batch is the whole minutes before the minute of the (limit+1)-th oldest figure: at most
    `limit` rows. When the oldest minute alone holds more, it is the servers of that minute up
    to the (limit+1)-th in name order; when one server's minute holds more still, that alone.
    """
    c = SAMPLES.c
    raw = [c.resolution_s == 0, c.at < cutoff]
    first = session.scalar(select(func.min(c.at)).where(*raw))
    if first is None:
        return None
    past = session.scalar(select(c.at).where(*raw).order_by(c.at).offset(limit).limit(1))
    if past is None:
        return raw
    start, end = _minute(first), _minute(past)
    if end > start:
        return [*raw, c.at < end]
    minute = [*raw, c.at >= start, c.at < start + MINUTE_S]
    lowest = session.scalar(select(func.min(c.server)).where(*minute))
    past_server = session.scalar(
        select(c.server).where(*minute).order_by(c.server).offset(limit).limit(1)
    )
    if past_server is None:
        return minute
    if past_server != lowest:
        return [*minute, c.server < past_server]
    return [*minute, c.server == lowest]


def _drop_batch(session: Session, cutoff: float, limit: int) -> int:
    """Delete up to `limit` one-minute averages older than `cutoff`; return how many."""
    c = SAMPLES.c
    oldest = (
        select(c.id).where(c.resolution_s == MINUTE_S, c.at < cutoff).order_by(c.at).limit(limit)
    )
    result = session.execute(delete(SAMPLES).where(c.id.in_(oldest)))
    return int(result.rowcount or 0)  # type: ignore[attr-defined]
