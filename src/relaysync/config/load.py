"""Loading configuration: TOML file, then RELAYSYNC_* environment overrides, then validation."""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

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
    options: Mapping[str, str] | None = None,
) -> T:
    """Build a config of `kind` from a TOML file, the environment and explicit overrides.

    Precedence, lowest first: defaults, the file, RELAYSYNC_<FIELD> variables, overrides
    (command-line options that were given).

    Args:
        options: the command-line option that sets a field (`master_url` -> `--master`), named
            when a required field is missing.

    Raises:
        ConfigError: unreadable file, unknown field (with the nearest known one), a missing
            field, or a value of the wrong type.
    """
    values: dict[str, Any] = {}
    if path is not None:
        values.update(_read_file(path, kind))
    env = os.environ if environ is None else environ
    for field in msgspec.structs.fields(kind):
        raw = env.get(ENV_PREFIX + field.name.upper())
        if raw is not None:
            values[field.name] = raw
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return msgspec.convert(values, kind, strict=False)
    except msgspec.ValidationError as exc:
        raise ConfigError(_explain(str(exc), options or {})) from exc


def _read_file(path: Path, kind: type[msgspec.Struct]) -> dict[str, Any]:
    """The settings of a TOML file, every one a field of `kind`.

    Raises:
        ConfigError: the file cannot be read or parsed, or names a setting `kind` has not.
    """
    try:
        values = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"{path}: {exc.strerror or exc}") from exc
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: {exc}") from exc
    known = [field.name for field in msgspec.structs.fields(kind)]
    unknown = [_unknown(key, known) for key in values if key not in known]
    if unknown:
        raise ConfigError(f"{path}: {'; '.join(unknown)}")
    return values


def _unknown(key: str, known: list[str]) -> str:
    """`unknown setting 'listn' (did you mean 'listen'?)`: a typo is not silently ignored."""
    near = difflib.get_close_matches(key, known, n=1)
    return f"unknown setting {key!r}" + (f" (did you mean {near[0]!r}?)" if near else "")


def _explain(problem: str, options: Mapping[str, str]) -> str:
    """msgspec's message, with a missing field named by what the operator can give."""
    missing = _MISSING.search(problem)
    if missing is None:  # "Expected `str`, got `int` - at `$.listen`" -> "listen: Expected..."
        at = _AT.fullmatch(problem)
        return f"{at.group(2)}: {at.group(1)}" if at else problem
    field = missing.group(1)
    ways = [options[field]] if field in options else []
    ways += [f"{field} in the --config file", ENV_PREFIX + field.upper()]
    return f"no {field} given: set it with {', '.join(ways[:-1])} or {ways[-1]}"


_MISSING = re.compile(r"missing required field `(\w+)`")
_AT = re.compile(r"(.*) - at `\$\.(\w+)`", re.DOTALL)


def split_address(address: str) -> tuple[str, int]:
    """Split host:port.

    Raises:
        ConfigError: not host:port with a numeric port.
    """
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"address {address!r} is not host:port")
    return host.strip("[]"), int(port)


def check_master_url(url: str, source: str = "--master") -> str:
    """The master's API URL, without a trailing slash, once it is http(s)://host[:port].

    Args:
        source: where the URL was given, named in the error (`--master`, RELAYSYNC_MASTER...).

    Raises:
        ConfigError: no http(s) scheme, a path, a port or host that is not one.
    """
    problem = _url_problem(url)
    if problem:
        raise ConfigError(f"{source} must be http(s)://host:port, got {url!r} ({problem})")
    return url.rstrip("/")


def _url_problem(url: str) -> str:
    if any(c.isspace() or not c.isprintable() for c in url):  # urlsplit drops some silently
        return "a space or control character in it (a CRLF line end of an env file?)"
    try:
        parts = urlsplit(url)
        port = parts.port  # parsed on access
    except ValueError as exc:  # "Port out of range 0-65535", "Invalid IPv6 URL"...
        return str(exc)[:1].lower() + str(exc)[1:]
    if parts.scheme not in ("http", "https"):
        return "no http:// or https:// in front" if "://" not in url else "not http or https"
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        return "no path: the master's API paths are added to host:port"
    if port == 0:
        return "port 0"
    return _host_problem(parts.hostname or "")


def _host_problem(host: str) -> str:
    if not host:
        return "no host"
    try:
        if ":" in host:
            ipaddress.IPv6Address(host)
        elif _NUMERIC.fullmatch(host):
            socket.inet_aton(host)  # as the resolver takes it: 127.1 too, not 256.1.1.1
        else:
            ascii_host = host.encode("idna").decode("ascii")  # bücher.example: xn--bcher-kva...
            if len(ascii_host) > _MAX_HOSTNAME or not all(
                _LABEL.fullmatch(label) for label in ascii_host.rstrip(".").split(".")
            ):
                return f"{host!r} is neither an IP address nor a host name"
    except UnicodeError:
        return f"{host!r} is neither an IP address nor a host name"
    except (ValueError, OSError):
        return f"{host!r} is not an IP address"
    return ""


_NUMERIC = re.compile(r"[0-9.]+")
_LABEL = re.compile(r"(?!-)[A-Za-z0-9_-]{1,63}(?<!-)")
_MAX_HOSTNAME = 253
