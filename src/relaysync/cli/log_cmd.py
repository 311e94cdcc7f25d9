"""`relaysync log`: the job log, changes with how many targets committed them, or the failures."""

from __future__ import annotations

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
    format_time,
    print_json,
    run_command,
    to_csv,
)
from relaysync.cli._shown import cell
from relaysync.errors import ConfigError

MAX_LIMIT = 1000  # the API's page size
CHANGE_COLUMNS = (
    "mapping",
    "mapping_id",
    "seq",
    "op",
    "path",
    "size",
    "reported_at",
    "committed_targets",
    "total_targets",
    "journal_id",
    "replaced",
)
EXCEPTION_COLUMNS = (
    "id",
    "mapping",
    "mapping_id",
    "target",
    "target_node",
    "seq",
    "path",
    "error",
    "at",
    "attempts",
    "resolved_at",
    "journal_id",
)


def log(
    mapping: Annotated[
        str | None, typer.Option("--mapping", "-m", help="Only this mapping (name or id).")
    ] = None,
    limit: Annotated[int, typer.Option(min=1, max=MAX_LIMIT, help="Newest rows to show.")] = 50,
    failed: Annotated[
        bool, typer.Option("--failed", help="Failures (exceptions) instead of changes.")
    ] = False,
    open_only: Annotated[
        bool, typer.Option("--open", help="Unresolved failures only (implies --failed).")
    ] = False,
    master: MasterOption = None,
    token: TokenOption = None,
    data: DataOption = None,
    ca_file: CaFileOption = None,
    json: JsonOption = False,
    csv: Annotated[
        bool, typer.Option("--csv", help="CSV with a header line, for spreadsheets.")
    ] = False,
) -> None:
    """Show the job log: the newest changes and how many targets have committed each."""

    def body() -> None:
        if json and csv:
            raise ConfigError("--json and --csv exclude each other")
        with connect(master, token, data, ca_file) as client:
            names = {m["id"]: m["name"] for m in client.get("/api/mappings")}
            servers = {s["node_id"]: s["name"] for s in client.get("/api/servers")}
            if failed or open_only:
                rows = client.get(
                    "/api/exceptions", mapping=mapping, limit=limit, open=open_only or None
                )
            else:
                rows = client.get("/api/jobs", mapping=mapping, limit=limit)
        rows = [label(r, names, servers) for r in rows]
        failures = failed or open_only
        if json:
            print_json(rows)
        elif csv:
            typer.echo(to_csv(rows, EXCEPTION_COLUMNS if failures else CHANGE_COLUMNS), nl=False)
        else:
            console.print(exceptions_table(rows) if failures else changes_table(rows))

    run_command(body)


def label(row: dict[str, Any], mappings: dict[int, str], servers: dict[str, str]) -> dict[str, Any]:
    """The row with the names of its mapping and (for failures) its target server added."""
    named = {**row, "mapping": mappings.get(row["mapping_id"], f"#{row['mapping_id']}")}
    if "target_node" in row:
        named["target"] = servers.get(row["target_node"], row["target_node"][:12])
    return named


def changes_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="Job log", title_justify="left")
    for column, justify in (
        ("mapping", "left"),
        ("seq", "right"),
        ("op", "left"),
        ("path", "left"),
        ("size", "right"),
        ("targets", "right"),
        ("reported", "left"),
    ):
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for r in rows:
        done = r["committed_targets"] >= r["total_targets"] or r.get("replaced", False)
        # a replaced journal's rows are history (the source's state was recreated): not pending
        targets = (
            "old journal" if r.get("replaced") else f"{r['committed_targets']}/{r['total_targets']}"
        )
        table.add_row(
            cell(r["mapping"]),
            str(r["seq"]),
            cell(r["op"]),
            cell(r["path"]),
            format_bytes(r["size"]),
            targets if done else f"[yellow]{targets}[/yellow]",
            format_time(r["reported_at"]),
        )
    return table


def exceptions_table(rows: list[dict[str, Any]]) -> Table:
    table = Table(title="Failures", title_justify="left")
    for column in (
        "mapping",
        "target",
        "seq",
        "path",
        "error",
        "attempts",
        "last failure",
        "resolved",
    ):
        table.add_column(column, overflow="fold")
    for r in rows:
        resolved = format_time(r["resolved_at"]) if r["resolved_at"] else "[red]open[/red]"
        table.add_row(
            cell(r["mapping"]),
            cell(r["target"]),
            str(r["seq"]),
            cell(r["path"]),
            cell(r["error"]),
            str(r["attempts"]),
            format_time(r["at"]),
            resolved,
        )
    return table
