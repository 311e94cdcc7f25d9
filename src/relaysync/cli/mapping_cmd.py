"""`relaysync mapping list|add|remove`: folder mappings over /api/mappings, without curl."""

from __future__ import annotations

from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from relaysync.cli._client import (
    DataOption,
    JsonOption,
    MasterOption,
    TokenOption,
    connect,
    console,
    print_json,
    run_command,
)
from relaysync.errors import ConfigError

app = typer.Typer(help="List, add and remove folder mappings.", no_args_is_help=True)


@app.command("list")
def list_mappings(
    master: MasterOption = None,
    token: TokenOption = None,
    data: DataOption = None,
    json: JsonOption = False,
) -> None:
    """List every mapping: source folder, target folders, filters."""

    def body() -> None:
        with connect(master, token, data) as client:
            mappings = client.get("/api/mappings")
        if json:
            print_json(mappings)
        else:
            console.print(mappings_table(mappings))

    run_command(body)


@app.command("add")
def add_mapping(
    name: Annotated[str, typer.Argument(help="The mapping's name.")],
    source: Annotated[str, typer.Option(help="SERVER:/folder to replicate from.")],
    target: Annotated[
        list[str], typer.Option(help="SERVER:/folder to replicate to; repeat for more.")
    ],
    include: Annotated[
        list[str] | None, typer.Option(help="Regular expression of paths to include; repeatable.")
    ] = None,
    exclude: Annotated[
        list[str] | None, typer.Option(help="Regular expression of paths to exclude; repeatable.")
    ] = None,
    durability: Annotated[str, typer.Option(help="safe (fsync before commit) or fast.")] = "safe",
    disabled: Annotated[bool, typer.Option("--disabled", help="Create it paused.")] = False,
    master: MasterOption = None,
    token: TokenOption = None,
    data: DataOption = None,
    json: JsonOption = False,
) -> None:
    """Map a source folder to target folders; the agents start on it with the next push."""

    def body() -> None:
        src_server, src_path = split_location(source)
        request = mapping_body(
            name,
            (src_server, src_path),
            [split_location(t) for t in target],
            include=include or [],
            exclude=exclude or [],
            durability=durability,
            enabled=not disabled,
        )
        with connect(master, token, data) as client:
            created = client.post("/api/mappings", request)
        if json:
            print_json(created)
        else:
            console.print(f"mapping {created['name']!r} created (id {created['id']})", markup=False)

    run_command(body)


@app.command("remove")
def remove_mapping(
    name: Annotated[str, typer.Argument(help="The mapping's name or id.")],
    master: MasterOption = None,
    token: TokenOption = None,
    data: DataOption = None,
    json: JsonOption = False,
) -> None:
    """Delete a mapping and its job log; files already on the targets stay."""

    def body() -> None:
        with connect(master, token, data) as client:
            found = client.get(f"/api/mappings/{name}")
            client.delete(f"/api/mappings/{found['id']}")
        if json:
            print_json({"removed": found})
        else:
            console.print(f"mapping {found['name']!r} removed (id {found['id']})", markup=False)

    run_command(body)


def split_location(location: str) -> tuple[str, str]:
    """Split `SERVER:/folder` into (server, folder).

    Raises:
        ConfigError: no server or no absolute folder.
    """
    server, sep, path = location.partition(":")
    if not sep or not server or not path.startswith("/"):
        raise ConfigError(f"location {location!r}: write it SERVER:/absolute/folder")
    return server, path


def mapping_body(
    name: str, source: tuple[str, str], targets: list[tuple[str, str]], **fields: Any
) -> dict[str, Any]:
    """The POST /api/mappings body (MappingIn)."""
    return {
        "name": name,
        "source": source[0],
        "source_path": source[1],
        "targets": [{"server": s, "path": p} for s, p in targets],
        **fields,
    }


def mappings_table(mappings: list[dict[str, Any]]) -> Table:
    table = Table(title="Mappings", title_justify="left")
    for column in ("id", "name", "source", "targets", "filters", "durability", "enabled"):
        table.add_column(column)
    for m in mappings:
        filters = [f"+{p}" for p in m["include"]] + [f"-{p}" for p in m["exclude"]]
        table.add_row(
            str(m["id"]),
            escape(m["name"]),
            escape(f"{m['source_name']}:{m['source_path']}"),
            escape("\n".join(f"{t['name']}:{t['path']}" for t in m["targets"])),
            escape(" ".join(filters)),
            escape(m["durability"]),
            "yes" if m["enabled"] else "[yellow]no[/yellow]",
        )
    return table
