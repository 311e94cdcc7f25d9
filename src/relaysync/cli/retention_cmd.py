"""`relaysync retention`: show or set how many days of job-log history and resolved alerts the
master keeps."""

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
    format_time,
    print_json,
    run_command,
)

KINDS = (  # (API field prefix, what the table calls it)
    ("changes", "change rows"),
    ("advances", "watermark advances"),
    ("exceptions", "resolved exceptions"),
    ("recovery_jobs", "finished recovery jobs"),
    ("alerts", "resolved alerts"),
)


def _days_option(what: str) -> Any:
    return typer.Option(min=0, help=f"Days of {what} to keep (0 = forever).")


def retention(
    changes_days: Annotated[int | None, _days_option("change rows")] = None,
    advances_days: Annotated[
        int | None, _days_option("watermark advances (commit times, routes, latency)")
    ] = None,
    exceptions_days: Annotated[
        int | None, _days_option("resolved exceptions (open ones are always kept)")
    ] = None,
    recovery_jobs_days: Annotated[int | None, _days_option("finished recovery jobs")] = None,
    alerts_days: Annotated[
        int | None, _days_option("resolved alerts (firing and acknowledged ones are always kept)")
    ] = None,
    master: MasterOption = None,
    token: TokenOption = None,
    data: DataOption = None,
    ca_file: CaFileOption = None,
    json: JsonOption = False,
) -> None:
    """Show the retention settings (job-log history, resolved alerts) and the last prune; with
    options, change them first."""

    def body() -> None:
        request = retention_request(
            changes=changes_days,
            advances=advances_days,
            exceptions=exceptions_days,
            recovery_jobs=recovery_jobs_days,
            alerts=alerts_days,
        )
        with connect(master, token, data, ca_file) as client:
            settings = (
                client.put("/api/retention", request) if request else client.get("/api/retention")
            )
        if json:
            print_json(settings)
        else:
            console.print(retention_table(settings))

    run_command(body)


def retention_request(**days: int | None) -> dict[str, int]:
    """The PUT /api/retention body: only the kinds given."""
    return {f"{kind}_days": value for kind, value in days.items() if value is not None}


def retention_table(settings: dict[str, Any]) -> Table:
    pruned_at = settings.get("last_pruned_at")
    title = f"Retention (last prune {format_time(pruned_at)})"
    table = Table(title=title, title_justify="left")
    table.add_column("history", overflow="fold")
    table.add_column("kept", justify="right", overflow="fold")
    table.add_column("last prune deleted", justify="right", overflow="fold")
    last = settings.get("last_pruned") or {}
    for kind, label in KINDS:
        days = int(settings[f"{kind}_days"])
        table.add_row(label, f"{days} days" if days else "forever", str(last.get(kind, "")))
    return table
