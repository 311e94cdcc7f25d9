"""Loading configuration: TOML file, then RELAYSYNC_* environment overrides, then validation."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

import msgspec

from relaysync.errors import ConfigError

T = TypeVar("T", bound=msgspec.Struct)

ENV_PREFIX = "RELAYSYNC_"


def load(
    kind: type[T],
    *,
    path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> T:
    """Build a config of `kind` from a TOML file, the environment and explicit overrides.

    Precedence, lowest first: defaults, the file, RELAYSYNC_<FIELD> variables, overrides
    (command-line options that were given).

    Raises:
        ConfigError: unreadable file, unknown field, or a value of the wrong type.
    """
    values: dict[str, Any] = {}
    if path is not None:
        try:
            values.update(tomllib.loads(path.read_text()))
        except (OSError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"{path}: {exc}") from exc
    env = os.environ if environ is None else environ
    for field in msgspec.structs.fields(kind):
        raw = env.get(ENV_PREFIX + field.name.upper())
        if raw is not None:
            values[field.name] = raw
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return msgspec.convert(values, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(str(exc)) from exc


def split_address(address: str) -> tuple[str, int]:
    """Split host:port.

    Raises:
        ConfigError: not host:port with a numeric port.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"address {address!r} is not host:port")
    return host.strip("[]"), int(port)
