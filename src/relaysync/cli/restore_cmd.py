"""`relaysync restore`: list or put back a kept previous version of a file, on a target server."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import msgspec
import typer

from relaysync.cli._client import console, print_json, run_command
from relaysync.cli._shown import shown
from relaysync.errors import ConfigError


def restore(
    path: Annotated[str, typer.Argument(help="The file, relative to the mapped folder.")],
    mapping: Annotated[str, typer.Option("--mapping", "-m", help="Mapping name or id.")],
    data: Annotated[Path, typer.Option("--data", help="This target agent's data directory.")],
    version: Annotated[
        str | None, typer.Option(help="Time stamp of the version (default: newest).")
    ] = None,
    list_only: Annotated[
        bool, typer.Option("--list", help="List the kept versions, restore nothing.")
    ] = False,
    json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
) -> None:
    """Restore a previous version of a replaced or deleted file kept on this target."""

    # here, not at the top: the transfer and watch packages would load in every other CLI
    # command (one process each) for nothing
    from relaysync.transfer.versions import VersionKeeper

    def body() -> None:
        root = _target_root(data, mapping)
        keeper = VersionKeeper(root, keep=0)
        if list_only:
            kept = keeper.versions(path)
            if json:
                print_json({"path": path, "versions": kept})
            else:
                for v in kept:
                    console.print(shown(v), markup=False)
            return
        chosen = keeper.restore(path, version)
        if json:
            print_json({"path": path, "restored": chosen})
        else:
            console.print(shown(f"restored {path} from version {chosen}"), markup=False)

    run_command(body)


def _target_root(data: Path, mapping: str) -> Path:
    """The folder this agent holds as a target of `mapping`, from its last assignment."""
    from relaysync.protocol.messages import Assignment  # see restore()

    try:
        assignment = msgspec.msgpack.decode(
            (data / "assignment.msgpack").read_bytes(), type=Assignment
        )
    except (OSError, msgspec.DecodeError) as exc:
        raise ConfigError(
            f"{data} holds no agent assignment ({exc}); pass the target agent's --data"
        ) from exc
    node_id = _node_id(data)
    for spec in assignment.mappings:
        if mapping in (spec.name, str(spec.mapping_id)):
            for target in spec.targets:
                if target.node_id == node_id:
                    return Path(target.path)
            raise ConfigError(f"this agent is not a target of mapping {mapping!r}")
    raise ConfigError(f"mapping {mapping!r} is not in this agent's assignment")


def _node_id(data: Path) -> str:
    from relaysync.transfer.tls import Identity

    return Identity.in_directory(data / "identity").node_id
