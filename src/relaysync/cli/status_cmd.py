"""`relaysync status`: the fleet at a glance, servers and how far behind each mapping's targets are."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.table import Table

from relaysync.auth.validity import EXPIRY_WARNING_S
from relaysync.cli._client import (
    CaFileOption,
    DataOption,
    JsonOption,
    MasterClient,
    MasterOption,
    TokenOption,
    connect,
    console,
    format_duration,
    format_time,
    print_json,
    run_command,
)
from relaysync.cli._shown import cell

NO_SERVERS = (
    "No server has joined yet: on each server run `relaysync agent --master URL --token JOIN_STRING "
    "--name NAME --data DIR` (the join string is in the master's data directory, `join-token`)."
)
NO_MAPPINGS = (
    "No mapping yet: `relaysync mapping add NAME --source SERVER:/path --target SERVER:/path`."
)


def status(
    master: MasterOption = None,
    token: TokenOption = None,
    data: DataOption = None,
    ca_file: CaFileOption = None,
    json: JsonOption = False,
) -> None:
    """Show servers (up or down, health, last seen) and, per mapping and target, watermark, lag
    and the changes a manual or reserved mapping holds back until its next release (pending);
    a mapping whose source cannot run says why."""
    run_command(lambda: _status(master, token, data, ca_file, as_json=json))


def _status(
    master: str | None,
    token: str | None,
    data: Path | None,
    ca_file: Path | None,
    *,
    as_json: bool,
) -> None:
    with connect(master, token, data, ca_file) as client:
        document = fetch_status(client)
    if as_json:
        print_json(document)
        return
    console.print(servers_table(document["servers"]))
    if not document["servers"]:
        console.print(NO_SERVERS, markup=False)
    console.print(mappings_table(document["mappings"]))
    if document["servers"] and not document["mappings"]:
        console.print(NO_MAPPINGS, markup=False)


def fetch_status(client: MasterClient) -> dict[str, Any]:
    """One document: `servers` as the API lists them, and `mappings` each with its targets' status."""
    servers = client.get("/api/servers")
    mappings = []
    for mapping in client.get("/api/mappings"):
        found = client.get(f"/api/mappings/{mapping['id']}/status")
        targets = found["targets"]
        mappings.append(
            {
                "id": mapping["id"],
                "name": mapping["name"],
                "source": mapping["source_name"],
                "source_path": mapping["source_path"],
                "enabled": mapping["enabled"],
                "state": mapping.get("state", ""),  # an older master: none
                "lag": sum(t["lag"] for t in targets),
                "pending": sum(t.get("pending", 0) for t in targets),  # an older master: none
                "open_exceptions": sum(t["open_exceptions"] for t in targets),
                # why its source cannot run ("" while it runs, or from an older master)
                "source_error": found.get("source_error", ""),
                "source_error_since": found.get("source_error_since"),
                "targets": targets,
            }
        )
    return {
        "servers": servers,
        "mappings": mappings,
        "summary": {
            "servers": len(servers),
            "servers_up": sum(s["state"] == "up" for s in servers),
            "mappings": len(mappings),
            "lag": sum(m["lag"] for m in mappings),
            "pending": sum(m["pending"] for m in mappings),
            "open_exceptions": sum(m["open_exceptions"] for m in mappings),
            "sources_failing": sum(bool(m["source_error"]) for m in mappings),
        },
    }


def servers_table(servers: list[dict[str, Any]]) -> Table:
    table = Table(title="Servers", title_justify="left")
    for column in ("name", "region", "group", "state", "health", "last seen", "certificate"):
        table.add_column(column, overflow="fold")
    for s in servers:
        state = {"up": "[green]up[/green]", "down": "[red]down[/red]"}.get(
            s["state"], cell(s["state"])
        )
        health = cell(s.get("health", "ok"))
        table.add_row(
            cell(s["name"]),
            cell(s["region"]),
            cell(s["group"]),
            state,
            health if health == "ok" else f"[yellow]{health}[/yellow]",
            format_time(s["last_seen"]),
            _certificate_left(s.get("cert_expires_in_s")),
        )
    return table


def _certificate_left(left_s: float | None) -> str:
    """Days left on a server's certificate: yellow within a month (re-join it), red once expired."""
    if left_s is None:
        return "unknown"
    if left_s <= 0:
        return f"[red]expired {format_duration(-left_s)} ago[/red]"
    text = f"{format_duration(left_s)} left"
    return f"[yellow]{text}[/yellow]" if left_s < EXPIRY_WARNING_S else text


def _idle(mapping: dict[str, Any]) -> str:
    """Why its agents do not run it, if they do not (an older master sends no state)."""
    if mapping.get("state") == "source_revoked":
        return " (idle: source revoked)"
    return "" if mapping["enabled"] else " (disabled)"


def mappings_table(mappings: list[dict[str, Any]]) -> Table:
    table = Table(title="Mappings", title_justify="left")
    for column, justify in (
        ("mapping", "left"),
        ("source", "left"),
        ("target", "left"),
        ("watermark", "right"),
        ("lag", "right"),
        ("pending", "right"),
        ("open exceptions", "right"),
        ("updated", "left"),
    ):
        table.add_column(column, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for m in mappings:
        source = cell(f"{m['source']}:{m['source_path']}") + _idle(m)
        if m.get("source_error"):
            since = m["source_error_since"]  # None: no failure reported (a revoked source)
            when = "" if since is None else f" since {format_time(since)}"
            source += f"\n[red]source failing{when}: {cell(m['source_error'])}[/red]"
        for i, t in enumerate(m["targets"]):
            lag = f"[yellow]{t['lag']}[/yellow]" if t["lag"] else "0"
            failed = f"[red]{t['open_exceptions']}[/red]" if t["open_exceptions"] else "0"
            table.add_row(
                cell(m["name"]) if i == 0 else "",
                source if i == 0 else "",
                cell(f"{t['target_name']}:{t['path']}"),
                str(t["watermark"]),
                lag,
                str(t.get("pending", 0)),  # held back by choice (manual, reserved): no colour
                failed,
                format_time(t["updated_at"]),
            )
    return table
