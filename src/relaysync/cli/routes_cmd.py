"""`relaysync routes MAPPING`: show a mapping's relay tree, or set it manual (--manual) or automatic (--auto)."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.console import Group
from rich.tree import Tree

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
from relaysync.cli._named import named_path
from relaysync.cli._shown import cell
from relaysync.errors import ConfigError


def routes(
    mapping: Annotated[str, typer.Argument(help="Mapping name or id.")],
    manual: Annotated[
        str | None,
        typer.Option(
            "--manual", help='Set a manual route: hops "src>a,a>b,a>c" (chains like "src>a>b" too).'
        ),
    ] = None,
    auto: Annotated[
        bool, typer.Option("--auto", help="Plan the route automatically (the default).")
    ] = False,
    fanout: Annotated[
        int | None, typer.Option("--fanout", min=1, help="Children per relay.")
    ] = None,
    master: MasterOption = None,
    token: TokenOption = None,
    data: DataOption = None,
    ca_file: CaFileOption = None,
    json: JsonOption = False,
) -> None:
    """Show the distribution tree of a mapping, what it cannot reach and what failed."""

    def body() -> None:
        request = routing_request(manual=manual, auto=auto, fanout=fanout)
        with connect(master, token, data, ca_file) as client:
            path = named_path(client, "mappings", mapping)
            if request:
                client.put(f"{path}/routing", request)
            document = client.get(f"{path}/routes")
        if json:
            print_json(document)
        else:
            console.print(routes_view(document))

    run_command(body)


def parse_route(text: str) -> list[tuple[str, str]]:
    """`src>a,a>b,a>c` (or chains `src>a>b`) as (parent, child) pairs.

    Raises:
        ConfigError: an empty route or a hop without two names.
    """
    pairs: list[tuple[str, str]] = []
    for part in text.split(","):
        names = [n.strip() for n in part.split(">")]
        if len(names) < 2 or not all(names):
            raise ConfigError(f"route hop {part.strip()!r}: write PARENT>CHILD, e.g. src>a,a>b")
        pairs.extend(zip(names, names[1:], strict=False))
    return pairs


def routing_request(*, manual: str | None, auto: bool, fanout: int | None) -> dict[str, Any]:
    """The PUT /api/mappings/{id}/routing body for the options given; {} to only show.

    Raises:
        ConfigError: --manual and --auto together.
    """
    if manual is not None and auto:
        raise ConfigError("--manual and --auto exclude each other")
    request: dict[str, Any] = {}
    if manual is not None:
        request |= {"mode": "manual", "hops": parse_route(manual)}
    if auto:
        request["mode"] = "auto"
    if fanout is not None:
        request["fanout"] = fanout
    return request


def routes_view(document: dict[str, Any]) -> Group:
    """The GET /api/mappings/{id}/routes document as a tree plus its failures."""
    tree = Tree(
        f"[bold]{cell(document['source'])}[/bold]  ({cell(document['mode'])}, route epoch {document['route_epoch']})"
    )
    branches: dict[str, Tree] = {document["source"]: tree}
    for hop in document["hops"]:  # parents come before their children
        parent = branches.get(hop["parent"], tree)
        branches[hop["child"]] = parent.add(
            f"{cell(hop['child'])}  [dim]{cell(str(hop['level']))}[/dim]"
        )
    parts: list[Any] = [tree]
    if not document["hops"]:
        parts.append("no relays: a star from the source")
    for name in document["unreachable"]:
        parts.append(f"[yellow]unreachable[/yellow] {cell(name)}")
    for f in document["failed"]:
        parts.append(
            f"[red]failed[/red] {cell(f['target'])} since {format_time(f['failed_at'])}: "
            f"{cell(f['reason'])} "
            f"(recovery {cell(f['policy'])})"
        )
    for h in document["failed_hops"]:
        parts.append(
            f"[yellow]avoided hop[/yellow] {cell(h['parent'])}>{cell(h['child'])} until {format_time(h['until'])}"
            + (f": {cell(h['error'])}" if h.get("error") else "")
        )
    for r in document["recoveries"]:
        parts.append(
            f"[cyan]recovering[/cyan] {cell(r['target'])} ({cell(r['trigger'])}) from seq {r['from_seq']} "
            f"to {r['goal_seq']}"
        )
    return Group(*parts)
