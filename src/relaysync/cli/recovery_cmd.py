"""`relaysync recovery MAPPING --policy ...`: how failed targets of a mapping come back."""

from __future__ import annotations

import enum
from typing import Annotated, Any

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
from relaysync.errors import ConfigError


class Policy(enum.StrEnum):
    at_once = "at_once"
    reserved = "reserved"
    manual = "manual"


def recovery(
    mapping: Annotated[str, typer.Argument(help="Mapping name or id.")],
    policy: Annotated[
        Policy, typer.Option("--policy", help="at_once, reserved (with --schedule) or manual.")
    ],
    schedule: Annotated[
        str | None,
        typer.Option(
            "--schedule", help="reserved: at:ISO-DATETIME, every:SECONDS or cron:EXPRESSION."
        ),
    ] = None,
    target: Annotated[
        str | None,
        typer.Option("--target", help="Only this target (an override of the mapping's policy)."),
    ] = None,
    master: MasterOption = None,
    token: TokenOption = None,
    data: DataOption = None,
    ca_file: CaFileOption = None,
    json: JsonOption = False,
) -> None:
    """Set the recovery policy of a mapping, or of one of its targets."""

    def body() -> None:
        request = recovery_request(policy.value, schedule, target)
        with connect(master, token, data, ca_file) as client:
            path = named_path(client, "mappings", mapping)
            settings = client.put(f"{path}/routing", request)
        if json:
            print_json(settings)
            return
        console.print(
            shown(
                f"mapping {mapping}: recovery {settings['recovery_policy']} "
                f"{settings['recovery_schedule']}".rstrip()
            ),
            markup=False,
        )
        for name, p in sorted(settings["targets"].items()):
            console.print(shown(f"  {name}: {p['policy']} {p['schedule']}".rstrip()), markup=False)

    run_command(body)


def recovery_request(policy: str, schedule: str | None, target: str | None) -> dict[str, Any]:
    """The PUT /api/mappings/{id}/routing body.

    Raises:
        ConfigError: a schedule without reserved, or reserved without a schedule.
    """
    if (policy == "reserved") != bool(schedule):
        raise ConfigError("--schedule goes with --policy reserved, and reserved needs one")
    if target is not None:
        return {"targets": {target: {"policy": policy, "schedule": schedule or ""}}}
    return {"recovery_policy": policy, "recovery_schedule": schedule or ""}
