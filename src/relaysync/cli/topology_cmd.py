"""`relaysync topology`: the fleet as regions > groups > servers, with capacity weights and state."""

from __future__ import annotations

from typing import Any

from rich.tree import Tree

from relaysync.cli._client import (
    CaFileOption,
    DataOption,
    JsonOption,
    MasterOption,
    TokenOption,
    connect,
    console,
    print_json,
    run_command,
)
from relaysync.cli._shown import cell
from relaysync.cli.status_cmd import NO_SERVERS

STATE_STYLE = {"up": "green", "down": "red"}


def topology(
    master: MasterOption = None,
    token: TokenOption = None,
    data: DataOption = None,
    ca_file: CaFileOption = None,
    json: JsonOption = False,
) -> None:
    """Show regions, their groups and servers (capacity weight, up or down); edit with `server set`."""

    def body() -> None:
        with connect(master, token, data, ca_file) as client:
            document = client.get("/api/topology")
        if json:
            print_json(document)
        else:
            console.print(topology_tree(document))

    run_command(body)


def topology_tree(document: dict[str, Any]) -> Tree:
    """The GET /api/topology document as a rich tree."""
    root = Tree("[bold]topology[/bold]")
    if not document["regions"]:
        root.add(f"[dim]{cell(NO_SERVERS)}[/dim]")
    for region in document["regions"]:
        branch = root.add(f"region [bold]{cell(region['name']) or '(none)'}[/bold]")
        for group in region["groups"]:
            leaf = branch.add(f"group [bold]{cell(group['name']) or '(none)'}[/bold]")
            for s in group["servers"]:
                style = STATE_STYLE.get(s["state"], "yellow")
                extra = " [dim](set by operator)[/dim]" if s["topology_locked"] else ""
                unhealthy = " [yellow]unhealthy[/yellow]" if s["health"] != "ok" else ""
                leaf.add(
                    f"{cell(s['name'])}  capacity {s['capacity_weight']}  "
                    f"[{style}]{cell(s['state'])}[/{style}]{unhealthy}{extra}"
                )
    return root
