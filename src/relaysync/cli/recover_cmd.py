"""`relaysync recover MAPPING TARGET`: put a failed target back now, whatever its recovery policy."""

from __future__ import annotations

from typing import Annotated

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
from relaysync.cli._named import named_path
from relaysync.cli._shown import shown


def recover(
    mapping: Annotated[str, typer.Argument(help="Mapping name or id.")],
    target: Annotated[str, typer.Argument(help="The failed target's server name.")],
    master: MasterOption = None,
    token: TokenOption = None,
    data: DataOption = None,
    ca_file: CaFileOption = None,
    json: JsonOption = False,
) -> None:
    """Start the recovery of a failed target: it is planned back in and resynced by manifest comparison."""

    def body() -> None:
        with connect(master, token, data, ca_file) as client:
            path = named_path(client, "mappings", mapping)
            job = client.post(f"{path}/recover", {"target": target})
        if json:
            print_json(job)
        else:
            console.print(
                shown(
                    f"recovery {job['id']} of {job['target']} started: from seq {job['from_seq']} "
                    f"to {job['goal_seq']}; `relaysync routes {mapping}` follows it"
                ),
                markup=False,
            )

    run_command(body)
