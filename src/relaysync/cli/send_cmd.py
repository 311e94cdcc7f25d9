"""`relaysync send MAPPING`: manual transmission, with a progress bar until every target has it."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from relaysync.cli._client import (
    CaFileOption,
    DataOption,
    JsonOption,
    MasterClient,
    MasterOption,
    TokenOption,
    connect,
    console,
    print_json,
    run_command,
)
from relaysync.cli._named import named_path
from relaysync.cli._run import err_console
from relaysync.cli._shown import cell, shown
from relaysync.errors import RelaySyncError

POLL_S = 0.2  # progress is read from the master this often
NOT_TAKEN_NOTE_S = 5.0  # a source that has not taken the release by then is said to be waited for


class SendTimedOut(RelaySyncError):
    """Not every target of {} holds the release after {} s; `relaysync status` shows which lag."""

    exit_code = 17


class SendNotTaken(SendTimedOut):
    """The source agent {} of {} did not take the release within {} s: it is down, or the mapping cannot start there (a source folder missing or refused); `relaysync routes` and that agent's log say why."""


def send(
    mapping: Annotated[str, typer.Argument(help="Mapping name or id.")],
    wait: Annotated[bool, typer.Option(help="Wait until every target has committed it.")] = True,
    timeout_s: Annotated[
        float, typer.Option("--timeout", help="Give up waiting after this many seconds.")
    ] = 600.0,
    master: MasterOption = None,
    token: TokenOption = None,
    data: DataOption = None,
    ca_file: CaFileOption = None,
    json: JsonOption = False,
) -> None:
    """Send what a manual (or reserved) mapping's source has journaled so far."""

    def body() -> None:
        with connect(master, token, data, ca_file) as client:
            path = named_path(client, "mappings", mapping)
            release = client.post(f"{path}/send", None)
            result: dict[str, Any] = {"mapping": mapping, "release": release["release"]}
            if wait:
                result |= _follow(client, mapping, int(release["release"]), timeout_s, quiet=json)
        if json:
            print_json(result)
        elif not wait:
            console.print(
                shown(f"release {result['release']} of {mapping} asked for"), markup=False
            )

    run_command(body)


def _follow(
    client: MasterClient, mapping: str, release: int, timeout_s: float, *, quiet: bool
) -> dict[str, Any]:
    """Show the release's progress: changes committed on every target, up to the seq it covers.
    Stopped following (Ctrl-C), the release goes on: said so, then the interrupt goes on."""
    try:
        return _follow_release(client, mapping, release, timeout_s, quiet=quiet)
    except KeyboardInterrupt:  # on stderr: stdout may be a --json document
        err_console.print(
            shown(
                f"stopped following: release {release} of {mapping} goes on; `relaysync status` "
                "shows its progress"
            ),
            markup=False,
            highlight=False,
        )
        raise


def _follow_release(
    client: MasterClient, mapping: str, release: int, timeout_s: float, *, quiet: bool
) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + timeout_s
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    )
    source = ""  # the source agent's name, once it is waited for
    taken, source_node = False, ""
    with Progress(*columns, console=console, disable=quiet, transient=False) as progress:
        task = progress.add_task(cell(f"sending {mapping}"), total=None)
        start: int | None = None
        path = named_path(client, "mappings", mapping)
        while time.monotonic() < deadline:
            mode = client.get(f"{path}/mode")
            status = client.get(f"{path}/status")
            source_node = str(status["source_node"])
            taken, upto = _taken(mode, release)
            marks = [int(t["watermark"]) for t in status["targets"]]
            if taken and not upto:  # nothing journaled: nothing to send
                return {"upto_seq": 0, "targets": len(marks)}
            if taken and marks:
                start = min(marks) if start is None else start
                done = min(upto, min(marks))
                progress.update(
                    task,
                    description=cell(f"sending {mapping}"),
                    total=max(upto - start, 1) * len(marks),
                    completed=sum(min(m, upto) - min(start, m) for m in marks),
                )
                if done >= upto:
                    return {"upto_seq": upto, "targets": len(marks)}
            elif not taken and not source and time.monotonic() - started >= NOT_TAKEN_NOTE_S:
                source = _server_name(client, source_node)
                waiting = f"waiting for the source agent {source} to take release {release}"
                progress.update(task, description=cell(waiting))
                if not quiet:
                    progress.console.print(
                        shown(f"{waiting} (is it up? does its source folder exist?)"),
                        markup=False,
                        highlight=False,
                    )
            time.sleep(POLL_S)
        if not taken and source_node:
            raise SendNotTaken(source or _server_name(client, source_node), mapping, timeout_s)
    raise SendTimedOut(mapping, timeout_s)


def _taken(mode: dict[str, Any], release: int) -> tuple[bool, int]:
    """Whether the source took `release` (or a later one, which covers it too), and the seq
    that covers. `released_upto` is the seq of `released_release`: until the source reports the
    new release it is the previous one's, which the targets may hold already (a master without
    `released_release`: taken once it is above 0 under this release's number)."""
    upto = int(mode["released_upto"])
    if "released_release" in mode:
        return int(mode["released_release"]) >= release, upto
    return int(mode["release"]) == release and upto > 0, upto


def _server_name(client: MasterClient, node_id: str) -> str:
    """A server's name and state ("web-1 (down)"), or its node id's start if not listed."""
    try:
        server = client.get(f"/api/servers/{node_id}")
    except RelaySyncError:
        return node_id[:16]
    return f"{server['name']} ({server['state']})"
