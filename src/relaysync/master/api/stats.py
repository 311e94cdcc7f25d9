"""REST resource /api/stats: job-log statistics by server, group, region, mapping or day, as JSON or CSV."""

from __future__ import annotations

import csv
import io
import logging
import math
from datetime import UTC, datetime
from typing import Annotated, Literal

from fastapi import Query
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict, TypeAdapter

from relaysync._util.untrusted_text import csv_cell
from relaysync.errors import ConfigError
from relaysync.master.api._context import Context

logger = logging.getLogger(__name__)

GroupBy = Literal["server", "group", "region", "mapping", "day"]
Format = Literal["json", "csv"]


class StatOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    key: str  # the server's, group's, region's or mapping's name, or the UTC day YYYY-MM-DD
    files: int  # changes committed on targets (one file to two targets counts twice)
    wire_bytes: int  # bytes on the wire to the targets
    failures: int  # failed (change, target) pairs
    failed_attempts: int  # their attempts, retries included
    open_failures: int  # failures not resolved since
    changes: int | None  # changes the sources reported (by mapping and day only)
    change_bytes: int | None  # their sizes
    file_ms_p50: float | None  # transfer time per committed file on its target, milliseconds
    file_ms_p95: float | None
    file_ms_p99: float | None
    latency_ms_p50: float | None  # source journaled it -> readers on the target see it, ms
    latency_ms_p95: float | None  # (two clocks unless source and target share a machine)
    latency_ms_p99: float | None


COLUMNS = tuple(StatOut.model_fields)
_rows_json = TypeAdapter(list[StatOut])


def parse_time(value: str | None) -> float | None:
    """Parse `since`/`until`: unix seconds, or an ISO date or date-time (UTC unless it says).

    Raises:
        ConfigError: neither.
    """
    if value is None or value == "":
        return None
    try:
        seconds = float(value)
    except ValueError:
        pass
    else:
        if not math.isfinite(seconds):  # nan, inf, 1e400: no moment
            raise ConfigError(f"time {value!r}: unix seconds must be a finite number")
        return seconds
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise ConfigError(
            f"time {value!r}: use YYYY-MM-DD, an ISO date-time or unix seconds"
        ) from exc
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def stats_csv(rows: list[StatOut]) -> str:
    """The rows as CSV, one header line, columns in StatOut's order.

    A key (a server's, group's, region's or mapping's name) a spreadsheet would take for a
    formula starts with `'`. Other characters stay as they are: this is a download for a
    spreadsheet, where they are the name's, not a terminal's (the CLI makes them visible)."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(COLUMNS)
    for row in rows:
        writer.writerow("" if v is None else csv_cell(v) for v in row.model_dump().values())
    return out.getvalue()


def get_stats(
    context: Context,
    by: GroupBy = "mapping",
    since: Annotated[str | None, Query(description="YYYY-MM-DD, ISO date-time or unix s")] = None,
    until: Annotated[str | None, Query(description="exclusive; same forms as since")] = None,
    format: Format = "json",
) -> Response:
    """Files, bytes on the wire, failures, per-file transfer time and source-to-target latency
    percentiles, per group.

    JSON: a list of StatOut. CSV (`format=csv`): the same columns, with a header line.
    """
    start, end = parse_time(since), parse_time(until)
    if start is not None and end is not None and start >= end:
        raise ConfigError(f"since ({since}) is not before until ({until}): no time lies between")
    found = context.store.stats.stats(by=by, since=start, until=end)
    rows = [StatOut.model_validate(r) for r in found]
    if format == "csv":
        return Response(
            stats_csv(rows),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": f'attachment; filename="stats-by-{by}.csv"'},
        )
    return JSONResponse(_rows_json.dump_python(rows, mode="json"))
