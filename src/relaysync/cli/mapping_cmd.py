"""`relaysync mapping list|add|set|remove`: folder mappings over /api/mappings, without curl."""

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
    print_json,
    run_command,
)
from relaysync.cli._named import find_named
from relaysync.cli._shown import cell, shown
from relaysync.errors import ConfigError

app = typer.Typer(help="List, add, change and remove folder mappings.", no_args_is_help=True)

SymlinksOption = Annotated[
    str | None,
    typer.Option(
        help='Symlinks the targets take: "safe" refuses one that points outside the folder, '
        '"any" takes all (only if you trust the source); "default" = each target agent\'s.'
    ),
]
ModeMaskOption = Annotated[
    str | None,
    typer.Option(
        help="Permission bits the targets remove, in octal: 002 (o-w, the default), 0 keeps all."
    ),
]


@app.command("list")
def list_mappings(
    master: MasterOption = None,
    token: TokenOption = None,
    data: DataOption = None,
    ca_file: CaFileOption = None,
    json: JsonOption = False,
) -> None:
    """List every mapping: source folder, target folders, filters."""

    def body() -> None:
        with connect(master, token, data, ca_file) as client:
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
    symlinks: SymlinksOption = None,
    mode_mask: ModeMaskOption = None,
    master: MasterOption = None,
    token: TokenOption = None,
    data: DataOption = None,
    ca_file: CaFileOption = None,
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
        check_policy_options(symlinks, mode_mask)  # before the mapping is made without it
        with connect(master, token, data, ca_file) as client:
            created = client.post("/api/mappings", request)
            if symlinks is not None or mode_mask is not None:
                set_target_policy(client, created["id"], symlinks, mode_mask)
        if json:
            print_json(created)
        else:
            console.print(
                f"mapping {shown(repr(created['name']))} created (id {created['id']})",
                markup=False,
            )

    run_command(body)


@app.command("set")
def set_mapping(
    name: Annotated[str, typer.Argument(help="The mapping's name or id.")],
    symlinks: SymlinksOption = None,
    mode_mask: ModeMaskOption = None,
    master: MasterOption = None,
    token: TokenOption = None,
    data: DataOption = None,
    ca_file: CaFileOption = None,
    json: JsonOption = False,
) -> None:
    """Change what the mapping's targets let land: symlinks and permission bits."""

    def body() -> None:
        if symlinks is None and mode_mask is None:
            raise ConfigError("nothing to change: give --symlinks or --mode-mask")
        check_policy_options(symlinks, mode_mask)
        with connect(master, token, data, ca_file) as client:
            found = find_named(client, "mappings", name)
            changed = set_target_policy(client, found["id"], symlinks, mode_mask)
        if json:
            print_json(changed)
        else:
            console.print(
                shown(
                    f"mapping {found['name']!r}: symlinks {changed['symlinks'] or 'default'}, "
                    f"mode mask {changed['mode_mask']:03o}"
                ),
                markup=False,
            )

    run_command(body)


SYMLINKS_CHOICES = ("default", "safe", "any")


def check_policy_options(symlinks: str | None, mode_mask: str | None) -> None:
    """Refuse a --symlinks or --mode-mask value before anything is sent.

    Raises:
        ConfigError: naming the option and what it takes.
    """
    if symlinks is not None and symlinks not in SYMLINKS_CHOICES:
        raise ConfigError(f"--symlinks {symlinks!r}: give one of {', '.join(SYMLINKS_CHOICES)}")
    if mode_mask is not None:
        parse_mode_mask(mode_mask)


def set_target_policy(
    client: Any, mapping_id: int, symlinks: str | None, mode_mask: str | None
) -> Any:
    """PUT the mapping's target policy, the options not given as they are.

    Raises:
        ConfigError: a mask that is not octal permission bits of group and others.
    """
    policy = client.get(f"/api/mappings/{mapping_id}/target-policy")
    if symlinks is not None:
        policy["symlinks"] = "" if symlinks == "default" else symlinks
    if mode_mask is not None:
        policy["mode_mask"] = parse_mode_mask(mode_mask)
    body = {"symlinks": policy["symlinks"], "mode_mask": policy["mode_mask"]}
    return client.put(f"/api/mappings/{mapping_id}/target-policy", body)


def parse_mode_mask(text: str) -> int:
    """The mode mask written in octal.

    Raises:
        ConfigError: not octal, or not permission bits of group and others only.
    """
    try:
        mask = int(text, 8)
    except ValueError:
        raise ConfigError(f"mode mask {text!r}: write it in octal, e.g. 002") from None
    # here, not at the top: relaysync.watch imports the watcher, scanner and manifest, which
    # every other CLI command (one process each) would load for nothing
    from relaysync.watch.target_policy import mode_mask_problem

    problem = mode_mask_problem(mask)
    if problem:
        raise ConfigError(problem)
    return mask


@app.command("remove")
def remove_mapping(
    name: Annotated[str, typer.Argument(help="The mapping's name or id.")],
    master: MasterOption = None,
    token: TokenOption = None,
    data: DataOption = None,
    ca_file: CaFileOption = None,
    json: JsonOption = False,
) -> None:
    """Delete a mapping and its job log; files already on the targets stay."""

    def body() -> None:
        with connect(master, token, data, ca_file) as client:
            found = find_named(client, "mappings", name)
            client.delete(f"/api/mappings/{found['id']}")
        if json:
            print_json({"removed": found})
        else:
            console.print(
                f"mapping {shown(repr(found['name']))} removed (id {found['id']})", markup=False
            )

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
    for column in ("id", "name", "source", "targets", "filters", "durability", "state"):
        table.add_column(column, overflow="fold")
    for m in mappings:
        filters = [f"+{p}" for p in m["include"]] + [f"-{p}" for p in m["exclude"]]
        table.add_row(
            str(m["id"]),
            cell(m["name"]),
            cell(f"{m['source_name']}:{m['source_path']}"),
            "\n".join(cell(f"{t['name']}:{t['path']}") for t in m["targets"]),
            cell(" ".join(filters)),
            cell(m["durability"]),
            _state(m),
        )
    return table


def _state(mapping: dict[str, Any]) -> str:
    """What its agents run; an older master sends no state: its `enabled` then."""
    state = mapping.get("state") or ("enabled" if mapping["enabled"] else "disabled")
    if state == "source_revoked":  # sent disabled although enabled: `relaysync status` says why
        return "[red]idle: source revoked[/red]"
    return "enabled" if state == "enabled" else f"[yellow]{cell(str(state))}[/yellow]"
