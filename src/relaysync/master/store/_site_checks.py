"""Checks of a site's fields (name, base URLs, caches, origins, secret) before they are stored.

Each check returns the value as stored, or raises ConfigError with what is wrong.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import urlsplit

from sqlalchemy import select
from sqlalchemy.orm import Session

from relaysync.errors import ConfigError
from relaysync.master.store import _mappings
from relaysync.master.store._site_tables import Site
from relaysync.purge.addresses import parse_cache_address, valid_host_port
from relaysync.purge.site import DEFAULT_ACCEPT_ENCODINGS, DRIVER_NAMES

SITE_FIELDS = frozenset(
    {
        "name",
        "provider",
        "mapping",
        "root",
        "base_urls",
        "aliases",
        "path_prefix",
        "index_files",
        "listings",
        "query_variants",
        "caches",
        "origins",
        "secret",
    }
)
MIN_SECRET_CHARS = 16  # an HMAC key shorter than this is guessable
MAX_SECRET_CHARS = 128  # the column's size (_site_tables.py): checked here, not by the database
_METHOD = re.compile(r"[A-Z]{1,20}")  # fullmatch: "$" would let a final newline in
# What goes into a purge request as it is, checked here so that a bad setting is refused when
# it is saved, not taken at purge time for an unreachable cache (h11 refuses to send it).
_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,100}")  # an RFC 9110 token
_HEADER_VALUE = re.compile(r"[\t\x20-\x7e]{0,4000}")  # visible ASCII, space and tab
_TEMPLATE = re.compile(r"[\x21-\x7e]{1,2000}")  # visible ASCII: no space, no control
_PLACEHOLDER = re.compile(r"\{[^{}]*\}")
TEMPLATE_PLACEHOLDERS = ("{path}", "{host}", "{url}")  # what purge/drivers/http.py fills in


def check_name(name: Any, what: str) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > 255 or name.isdigit():
        raise ConfigError(f"{what} {name!r} must be 1-255 characters and not all digits")
    return name


def _check_base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not valid_host_port(parts.netloc):
        raise ConfigError(f"base URL {url!r} must be http(s)://host[:port]")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise ConfigError(f"base URL {url!r} must not have a path: use path_prefix")
    return f"{parts.scheme}://{parts.netloc.lower()}"


MAX_ACCEPT_ENCODINGS = 16  # each is one more refresh, purge and confirm per URL on the cache


def _check_encodings(name: str, raw: Any) -> list[str]:
    """A cache's `accept_encodings`: distinct one-line header values, "" for no header."""
    values = raw if raw is not None else []
    if isinstance(values, list) and all(isinstance(v, str) for v in values):
        values = [v.strip() for v in values]
    if (
        not isinstance(values, list)
        or len(values) > MAX_ACCEPT_ENCODINGS
        or any(not isinstance(v, str) or len(v) > 200 or "\n" in v or "\r" in v for v in values)
        or len(set(values)) != len(values)
    ):
        raise ConfigError(
            f"cache {name!r}: accept_encodings must be a list of at most "
            f'{MAX_ACCEPT_ENCODINGS} distinct Accept-Encoding values ("" for none)'
        )
    return list(values)


def _check_headers(name: str, headers: Any) -> dict[str, str]:
    """A cache's purge `headers`: names RFC 9110 tokens, values visible ASCII, space and tab."""
    if not isinstance(headers, dict):
        raise ConfigError(f"cache {name!r}: headers must be a name -> value object")
    checked = {str(k): str(v) for k, v in headers.items()}
    for key, value in checked.items():
        if not _HEADER_NAME.fullmatch(key):
            raise ConfigError(
                f"cache {name!r}: header name {key!r} must be 1-100 letters, digits or "
                "!#$%&'*+-.^_`|~ (an HTTP token: no space, no colon)"
            )
        if not _HEADER_VALUE.fullmatch(value):
            raise ConfigError(
                f"cache {name!r}: header {key!r}: the value must be at most 4000 visible ASCII "
                "characters, spaces and tabs (no control characters)"
            )
    return checked


def _check_path_template(name: str, raw: Any) -> str:
    """A cache's `path_template`: visible ASCII without spaces, starting with "/" or one of
    TEMPLATE_PLACEHOLDERS, and no other {placeholder}."""
    template = raw if isinstance(raw, str) else ""
    unknown = [p for p in _PLACEHOLDER.findall(template) if p not in TEMPLATE_PLACEHOLDERS]
    if (
        not _TEMPLATE.fullmatch(template)
        or not template.startswith(("/", *TEMPLATE_PLACEHOLDERS))
        or unknown
    ):
        raise ConfigError(
            f"cache {name!r}: path_template {raw!r} must be 1-2000 visible ASCII characters "
            f"(no space or control character) starting with / or a placeholder; placeholders "
            f"are {', '.join(TEMPLATE_PLACEHOLDERS)}"
        )
    return template


def _check_cache(raw: dict[str, Any]) -> dict[str, Any]:
    name = check_name(raw.get("name"), "cache name")
    driver = raw.get("driver")
    if driver not in DRIVER_NAMES:
        raise ConfigError(
            f"cache {name!r}: driver {driver!r} must be one of {', '.join(DRIVER_NAMES)}"
        )
    try:
        parse_cache_address(str(raw.get("address", "")))
    except ConfigError as exc:
        raise ConfigError(f"cache {name!r}: {exc.args[0]}") from None
    method = str(raw.get("method") or "PURGE").upper()
    if not _METHOD.fullmatch(method):
        raise ConfigError(f"cache {name!r}: method {method!r} is not an HTTP method")
    headers = _check_headers(name, raw.get("headers") or {})
    template = _check_path_template(name, raw.get("path_template") or "{path}")
    encodings = _check_encodings(name, raw.get("accept_encodings"))
    checked = {
        "name": name,
        "driver": driver,
        "address": str(raw["address"]),
        "refresh": bool(raw.get("refresh", True)),
        "method": method,
        "path_template": template,
        "headers": headers,
    }
    if not raw.get("tls_verify", True):  # kept only when off: a row without it reads as on,
        checked["tls_verify"] = False  # and rows saved before the setting stay as they were
    if encodings and tuple(encodings) != DEFAULT_ACCEPT_ENCODINGS[driver]:
        checked["accept_encodings"] = encodings  # likewise kept only when not the default
    return checked


def _check_origin(session: Session, raw: dict[str, Any]) -> dict[str, str]:
    out: dict[str, str] = {}
    if raw.get("server"):
        out["node_id"] = _mappings.resolve_server(session, str(raw["server"])).node_id
    if raw.get("url"):
        out["url"] = _check_base_url(str(raw["url"]))
    if not out:
        raise ConfigError("an origin needs a server, a url, or both")
    return out


def validate_site(session: Session, fields: dict[str, Any], site_id: int | None) -> dict[str, Any]:
    v: dict[str, Any] = {"name": check_name(fields["name"], "site name")}
    clash = session.scalar(select(Site.id).where(Site.name == v["name"]))
    if clash is not None and clash != site_id:
        raise ConfigError(f"site name {v['name']!r} is already used by site {clash}")
    mapping = fields.get("mapping")
    v["mapping_id"] = None if mapping in (None, "") else _mappings.find_mapping(session, mapping).id
    root = str(fields.get("root") or "").strip("/")
    if ".." in root.split("/") or "\0" in root:
        raise ConfigError(f"site root {root!r} must be a relative folder without '..'")
    v["root"] = root
    if not fields.get("base_urls"):
        raise ConfigError(f"site {v['name']!r} needs at least one base URL")
    v["base_urls"] = [_check_base_url(u) for u in fields["base_urls"]]
    for alias in fields.get("aliases") or ():
        if not valid_host_port(alias):
            raise ConfigError(f"host alias {alias!r} must be host[:port]")
    v["aliases"] = [a.lower() for a in fields.get("aliases") or ()]
    prefix = str(fields.get("path_prefix") or "/")
    if not prefix.startswith("/") or ".." in prefix.split("/"):
        raise ConfigError(f"path prefix {prefix!r} must start with / and have no '..'")
    v["path_prefix"] = prefix
    v["index_files"] = [str(i) for i in fields.get("index_files", ["index.html"])]
    listings = fields.get("listings", False)
    if not isinstance(listings, bool):
        raise ConfigError(f"site {v['name']!r}: listings must be true or false, not {listings!r}")
    v["listings"] = listings
    variants = fields.get("query_variants")
    if variants is not None and not isinstance(variants, bool):
        raise ConfigError(
            f"site {v['name']!r}: query_variants must be true, false or null, not {variants!r}"
        )
    v["query_variants"] = variants
    caches = [_check_cache(dict(c)) for c in fields.get("caches") or ()]
    if len({c["name"] for c in caches}) != len(caches):
        raise ConfigError(f"site {v['name']!r}: two caches have the same name")
    v["caches"] = caches
    v["origins"] = [_check_origin(session, dict(o)) for o in fields.get("origins") or ()]
    return v


def check_secret(secret: str) -> str:
    """Return `secret` if it may be a site's HMAC key.

    Raises:
        ConfigError: shorter than MIN_SECRET_CHARS or longer than MAX_SECRET_CHARS.
    """
    if not MIN_SECRET_CHARS <= len(secret) <= MAX_SECRET_CHARS:
        raise ConfigError(
            f"a site secret needs {MIN_SECRET_CHARS} to {MAX_SECRET_CHARS} characters"
        )
    return secret
