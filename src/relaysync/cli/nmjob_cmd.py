"""`relaysync nmjob create|list|show|delete`: N:M jobs (several sources, several targets) over /api/nm-jobs."""

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
from relaysync.cli._shown import cell
from relaysync.cli.mapping_cmd import split_location

app = typer.Typer(
    help="Create, list, show and delete N:M jobs (several sources to several targets).",
    no_args_is_help=True,
)


@app.command("create")
def create(
    name: Annotated[str, typer.Argument(help="The job's name; members are named NAME@SOURCE.")],
    source: Annotated[
        list[str], typer.Option(help="SERVER:/folder to replicate from; repeat for more.")
    ],
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
    master: MasterOption = None,
    token: TokenOption = None,
    data: DataOption = None,
    ca_file: CaFileOption = None,
    json: JsonOption = False,
) -> None:
    """Create a job: every source's changes go to every target; newest mtime wins a conflict."""

    def body() -> None:
        request = {
            "name": name,
            "durability": durability,
            "include": include or [],
            "exclude": exclude or [],
            "sources": [_location(s) for s in source],
            "targets": [_location(t) for t in target],
        }
        with connect(master, token, data, ca_file) as client:
            created = client.post("/api/nm-jobs", request)
        if json:
            print_json(created)
        else:
            console.print(
                f"N:M job {cell(repr(created['name']))} created (id {created['id']}), "
                f"{len(created['members'])} member mappings"
            )

    run_command(body)


@app.command("list")
def list_jobs(
    master: MasterOption = None,
    token: TokenOption = None,
    data: DataOption = None,
    ca_file: CaFileOption = None,
    json: JsonOption = False,
) -> None:
    """List every N:M job: sources, targets, rule."""

    def body() -> None:
        with connect(master, token, data, ca_file) as client:
            jobs = client.get("/api/nm-jobs")
        if json:
            print_json(jobs)
        else:
            console.print(jobs_table(jobs))

    run_command(body)


@app.command("show")
def show(
    name: Annotated[str, typer.Argument(help="The job's name or id.")],
    limit: Annotated[int, typer.Option(help="Conflicts to show, newest first.")] = 20,
    master: MasterOption = None,
    token: TokenOption = None,
    data: DataOption = None,
    ca_file: CaFileOption = None,
    json: JsonOption = False,
) -> None:
    """Show one job: its member mappings and its latest conflicts."""

    def body() -> None:
        with connect(master, token, data, ca_file) as client:
            job = find_named(client, "nm-jobs", name)
            conflicts = client.get(f"/api/nm-jobs/{job['id']}/conflicts", limit=limit)
        if json:
            print_json({**job, "conflicts": conflicts})
            return
        console.print(jobs_table([job]))
        console.print(conflicts_table(conflicts, _names(job)))

    run_command(body)


@app.command("delete")
def delete(
    name: Annotated[str, typer.Argument(help="The job's name or id.")],
    master: MasterOption = None,
    token: TokenOption = None,
    data: DataOption = None,
    ca_file: CaFileOption = None,
    json: JsonOption = False,
) -> None:
    """Delete a job and its member mappings; files already on the targets stay."""

    def body() -> None:
        with connect(master, token, data, ca_file) as client:
            job = find_named(client, "nm-jobs", name)
            client.delete(f"/api/nm-jobs/{job['id']}")
        if json:
            print_json({"removed": job})
        else:
            console.print(
                f"N:M job {cell(repr(job['name']))} removed with {len(job['members'])} member "
                "mappings"
            )

    run_command(body)


def _location(location: str) -> dict[str, str]:
    server, path = split_location(location)
    return {"server": server, "path": path}


def _names(job: dict[str, Any]) -> dict[str, str]:
    names = {t["node_id"]: t["name"] for t in job["targets"]}
    names.update({m["source_node"]: m["source_name"] for m in job["members"]})
    return names


def jobs_table(jobs: list[dict[str, Any]]) -> Table:
    table = Table(title="N:M jobs", title_justify="left")
    for column in ("id", "name", "sources (member mapping)", "targets", "rule", "durability"):
        table.add_column(column, overflow="fold")
    for j in jobs:
        table.add_row(
            str(j["id"]),
            cell(j["name"]),
            "\n".join(
                cell(f"{m['source_name']}:{m['source_path']} ({m['mapping_id']})")
                for m in j["members"]
            ),
            "\n".join(cell(f"{t['name']}:{t['path']}") for t in j["targets"]),
            cell(j["conflict"]),
            cell(j["durability"]),
        )
    return table


def conflicts_table(conflicts: list[dict[str, Any]], names: dict[str, str]) -> Table:
    table = Table(title="Conflicts (newest first)", title_justify="left")
    for column in ("path", "op", "target", "winner", "loser", "reason"):
        table.add_column(column, overflow="fold")
    for c in conflicts:
        table.add_row(
            cell(c["path"]),
            cell(c["op"]),
            cell(names.get(c["target_node"], c["target_node"][:12])),
            cell(names.get(c["winner_node"], c["winner_node"][:12] or "?")),
            cell(names.get(c["loser_node"], c["loser_node"][:12] or "?")),
            cell(c["reason"]),
        )
    return table
