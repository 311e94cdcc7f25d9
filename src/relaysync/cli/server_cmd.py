"""`relaysync server set|remove|revoke NAME`: a server's place in the topology (region, group, capacity
weight); forgetting a server so its name can join again; refusing its certificate at once."""

from __future__ import annotations

from typing import Annotated
from urllib.parse import quote

import typer

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
from relaysync.cli._shown import shown
from relaysync.errors import ConfigError

app = typer.Typer(
    help="Edit servers: their place in the topology; remove or revoke one.", no_args_is_help=True
)


@app.command("set")
def set_server(
    name: Annotated[str, typer.Argument(help="Server name or node id.")],
    region: Annotated[str | None, typer.Option("--region", help="Region name.")] = None,
    group: Annotated[
        str | None, typer.Option("--group", help="Group name within the region.")
    ] = None,
    capacity: Annotated[
        int | None,
        typer.Option("--capacity", min=1, help="Capacity weight (>= 1): its share of relaying."),
    ] = None,
    unlock: Annotated[
        bool, typer.Option("--unlock", help="Let the agent's own region and group apply again.")
    ] = False,
    master: MasterOption = None,
    token: TokenOption = None,
    data: DataOption = None,
    ca_file: CaFileOption = None,
    json: JsonOption = False,
) -> None:
    """Set a server's region, group or capacity; it wins over what its agent registers with."""

    def body() -> None:
        request = server_patch(region=region, group=group, capacity=capacity, unlock=unlock)
        with connect(master, token, data, ca_file) as client:
            server = client.patch(server_path(name), request)
        if json:
            print_json(server)
        else:
            console.print(
                shown(
                    f"server {server['name']!r}: region {server['region']!r}, "
                    f"group {server['group']!r}, capacity {server['capacity_weight']}"
                ),
                markup=False,
            )

    run_command(body)


def server_path(name: str) -> str:
    """/api/servers/NAME, NAME quoted.

    Raises:
        ConfigError: NAME has a "/", which no server name or node id has (names are checked at
            join, auth/ca.py check_node_name); the API's router would decode its %2F before
            routing, so it would not even be one path segment.
    """
    if "/" in name:
        raise ConfigError(
            f"no server is named {name!r}: server names are 1-63 of A-Z a-z 0-9 . _ - (no '/'), "
            "node ids are hex; `relaysync status` lists them"
        )
    return f"/api/servers/{quote(name, safe='')}"


def server_patch(
    *, region: str | None, group: str | None, capacity: int | None, unlock: bool = False
) -> dict[str, object]:
    """The PATCH /api/servers/{name} body (TopologyPatch).

    Raises:
        ConfigError: nothing to change.
    """
    request: dict[str, object] = {
        k: v
        for k, v in (("region", region), ("group", group), ("capacity_weight", capacity))
        if v is not None
    }
    if unlock:
        request["locked"] = False
    if not request:
        raise ConfigError("nothing to set: give --region, --group, --capacity or --unlock")
    return request


@app.command("remove")
def remove_server(
    name: Annotated[str, typer.Argument(help="Server name or node id.")],
    master: MasterOption = None,
    token: TokenOption = None,
    data: DataOption = None,
    ca_file: CaFileOption = None,
) -> None:
    """Forget a server no mapping uses, so that its name can join again (a rebuilt machine)."""

    def body() -> None:
        with connect(master, token, data, ca_file) as client:
            client.delete(server_path(name))
        console.print(
            shown(f"server {name!r} removed: an agent may join under its name"), markup=False
        )

    run_command(body)


@app.command("revoke")
def revoke_server(
    name: Annotated[str, typer.Argument(help="Server name or node id.")],
    master: MasterOption = None,
    token: TokenOption = None,
    data: DataOption = None,
    ca_file: CaFileOption = None,
    json: JsonOption = False,
) -> None:
    """Refuse a server's certificate at once, even while mappings use it (a stolen key)."""

    def body() -> None:
        with connect(master, token, data, ca_file) as client:
            revoked = client.post(server_path(name) + "/revoke", {})
        if json:
            print_json(revoked)
            return
        console.print(
            shown(
                f"server {revoked['name']!r} revoked: its certificate is refused from now on; it is "
                f"a failed target of {len(revoked['failed_in'])} mapping(s)"
                + (
                    f" and the source of {', '.join(revoked['source_of'])}"
                    if revoked["source_of"]
                    else ""
                )
                + f". Remove it with `relaysync server remove {revoked['name']}` once no mapping "
                "names it."
            ),
            markup=False,
        )

    run_command(body)
