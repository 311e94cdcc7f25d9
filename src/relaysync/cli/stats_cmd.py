"""`relaysync stats`: job-log statistics by server, group, region, mapping or day."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any

import typer
from rich.table import Table

from relaysync.cli._client import (
    CaFileOption,
    DataOption,
    JsonOption,
    MasterOption,
    TokenOption,
    connect,
    console,
    format_bytes,
    print_json,
    reprinted_csv,
    run_command,
)
from relaysync.cli._shown import cell
from relaysync.errors import ConfigError


class GroupBy(StrEnum):
    server = "server"
    group = "group"
    region = "region"
    mapping = "mapping"
    day = "day"


def stats(
    by: Annotated[
        GroupBy,
        typer.Option("--by", help="Group by target server, group, region, mapping or UTC day."),
    ] = GroupBy.mapping,
    since: Annotated[
        str | None, typer.Option(help="From this time: YYYY-MM-DD, ISO date-time or unix s.")
    ] = None,
    until: Annotated[
        str | None, typer.Option(help="Before this time (same forms as --since).")
    ] = None,
    master: MasterOption = None,
    token: TokenOption = None,
    data: DataOption = None,
    ca_file: CaFileOption = None,
    json: JsonOption = False,
    csv: Annotated[
        bool, typer.Option("--csv", help="CSV with a header line, as the master exports it.")
    ] = False,
) -> None:
    """Show files, bytes on the wire, failures, transfer time and source-to-target latency percentiles."""

    def body() -> None:
        if json and csv:
            raise ConfigError("--json and --csv exclude each other")
        params = {"by": by.value, "since": since, "until": until}
        with connect(master, token, data, ca_file) as client:
            if csv:
                csv_text = client.get_text("/api/stats", format="csv", **params)
                typer.echo(reprinted_csv(csv_text), nl=False)
                return
            rows = client.get("/api/stats", **params)
        if json:
            print_json(rows)
        else:
            console.print(stats_table(rows, by.value))

    run_command(body)


def _ms(value: float | None) -> str:
    return "" if value is None else f"{value:.1f}"


def stats_table(rows: list[dict[str, Any]], by: str) -> Table:
    with_changes = by in ("mapping", "day")
    table = Table(title=f"Statistics by {by}", title_justify="left")
    columns = [
        by,
        "files",
        "wire bytes",
        "failures",
        "open",
        "xfer p50 ms",
        "xfer p95 ms",
        "xfer p99 ms",
        "latency p50 ms",
        "latency p95 ms",
        "latency p99 ms",
    ]
    if with_changes:
        columns[1:1] = ["changes", "change bytes"]
    table.add_column(columns[0], overflow="fold")
    for column in columns[1:]:
        table.add_column(column, justify="right", overflow="fold")
    for r in rows:
        cells = [
            cell(str(r["key"])) if r["key"] else "(none)",
            str(r["files"]),
            format_bytes(r["wire_bytes"]),
            str(r["failures"]),
            str(r["open_failures"]),
            _ms(r["file_ms_p50"]),
            _ms(r["file_ms_p95"]),
            _ms(r["file_ms_p99"]),
            _ms(r.get("latency_ms_p50")),
            _ms(r.get("latency_ms_p95")),
            _ms(r.get("latency_ms_p99")),
        ]
        if with_changes:
            cells[1:1] = [str(r["changes"]), format_bytes(r["change_bytes"])]
        table.add_row(*cells)
    return table
