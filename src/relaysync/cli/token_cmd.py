"""`relaysync token list|create-join|create-api|revoke`: join and API tokens over /api/tokens."""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any
from urllib.parse import quote

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
from relaysync.cli._run import err_console
from relaysync.cli._shown import cell, shown

app = typer.Typer(
    help="List, create and revoke join tokens (agents) and API tokens (clients).",
    no_args_is_help=True,
)

ADMIN_NOTE = (
    "The admin token (the master's data_dir/admin-token) is not in this list and cannot be "
    "revoked: replace that file and restart the master to change it."
)


class Scope(StrEnum):  # auth.tokens.TokenScope, as typer shows the choices
    READ = "read"
    ADMIN = "admin"


class Kind(StrEnum):
    JOIN = "join"  # upper case: a member named `join` would hide str.join
    API = "api"


@app.command("list")
def list_tokens(
    master: MasterOption = None,
    token: TokenOption = None,
    data: DataOption = None,
    ca_file: CaFileOption = None,
    json: JsonOption = False,
) -> None:
    """List join and API tokens by id; the tokens themselves are never shown again."""

    def body() -> None:
        with connect(master, token, data, ca_file) as client:
            listed = {"join": client.get("/api/tokens/join"), "api": client.get("/api/tokens/api")}
        if json:
            print_json(listed)
        else:
            console.print(tokens_table(listed["join"], listed["api"]))

    run_command(body)


@app.command("create-join")
def create_join(
    ttl_s: Annotated[
        float | None,
        typer.Option("--ttl-s", min=0.001, help="Lifetime in seconds (default: never expires)."),
    ] = None,
    master: MasterOption = None,
    token: TokenOption = None,
    data: DataOption = None,
    ca_file: CaFileOption = None,
    json: JsonOption = False,
) -> None:
    """Create a join token for agents; its join string is printed only once.

    Give agents the join string (`relaysync agent --token JOIN_STRING`): the token, a '.', and
    the SHA-256 fingerprint of the fleet's CA. An agent refuses to join a master whose CA has
    another fingerprint, so nobody else answering its first join can make it trust them.
    """

    def body() -> None:
        with connect(master, token, data, ca_file) as client:
            created = client.post("/api/tokens/join", {"ttl_s": ttl_s})
        expires = format_time(created["expires_at"]) if created["expires_at"] else "never"
        what = f"join string of join token {created['id']} (expires: {expires})"
        _print_created(created, what, json=json, field="join_string")

    run_command(body)


@app.command("create-api")
def create_api(
    name: Annotated[str, typer.Argument(help="Who or what uses it, e.g. ci or alice.")],
    scope: Annotated[
        Scope,
        typer.Option(
            "--scope",
            help="read: GET and HEAD only (dashboards, monitoring); admin: everything, "
            "creating and revoking tokens included (the default, as before scopes).",
        ),
    ] = Scope.ADMIN,
    master: MasterOption = None,
    token: TokenOption = None,
    data: DataOption = None,
    ca_file: CaFileOption = None,
    json: JsonOption = False,
) -> None:
    """Create an API token for a client of the master (`--token`); it is printed only once."""

    def body() -> None:
        with connect(master, token, data, ca_file) as client:
            created = client.post("/api/tokens/api", {"name": name, "scope": scope.value})
        what = f"API token {created['id']} ({created['name']}, scope {created['scope']})"
        _print_created(created, what, json=json)

    run_command(body)


@app.command("revoke")
def revoke(
    kind: Annotated[Kind, typer.Argument(help="join or api.")],
    token_id: Annotated[str, typer.Argument(metavar="ID", help="The id `token list` shows.")],
    master: MasterOption = None,
    token: TokenOption = None,
    data: DataOption = None,
    ca_file: CaFileOption = None,
    json: JsonOption = False,
) -> None:
    """Revoke a token at once: a join token joins no more agents, an API token gets 401."""

    def body() -> None:
        with connect(master, token, data, ca_file) as client:
            client.delete(f"/api/tokens/{kind.value}/{quote(token_id, safe='')}")
        if json:
            print_json({"revoked": {"kind": kind.value, "id": token_id}})
        else:
            console.print(shown(f"{kind.value} token {token_id} revoked"), markup=False)

    run_command(body)


def _print_created(created: dict[str, Any], what: str, *, json: bool, field: str = "token") -> None:
    """The token alone on stdout (`TOKEN=$(relaysync token create-join)`), the rest on stderr."""
    if json:
        print_json(created)
        return
    err_console.print(
        f"{what}; it is shown only this once:", markup=False, highlight=False, soft_wrap=True
    )
    console.print(shown(created[field]), markup=False, soft_wrap=True)


def tokens_table(join: list[dict[str, Any]], api: list[dict[str, Any]]) -> Table:
    table = Table(title="Tokens", title_justify="left", caption=ADMIN_NOTE, caption_justify="left")
    for column in ("kind", "id", "name", "scope", "created", "by", "expires", "state"):
        table.add_column(column, overflow="fold")
    for t in join:
        table.add_row(
            "join",
            cell(t["id"]),
            "",
            "",
            format_time(t["created_at"]),
            _creator(t),
            format_time(t["expires_at"]) if t["expires_at"] is not None else "never",
            "[red]expired[/red]" if t["expired"] else "valid",
        )
    for t in api:
        table.add_row(
            "api",
            str(t["id"]),
            cell(t["name"]),
            cell(t.get("scope", "?")),  # "?": a master from before scopes
            format_time(t["created_at"]),
            _creator(t),
            "never",
            "valid",
        )
    return table


def _creator(listed: dict[str, Any]) -> str:
    """Who created a token: "admin", "api:<id>", or "?" for one from before this was kept."""
    return cell(listed.get("created_by") or "?")
