"""The API path of a mapping or N:M job the operator named: always one path segment.

A name went into the path as typed: `relaysync mapping remove 'blog#old'` asked for
/api/mappings/blog (httpx takes "#old" for a fragment, "?x" for a query) and removed the mapping
`blog`. Names of the master's usual characters go as they are; any other is quoted, and one with
a "/" (which the API's router decodes from %2F before routing, so it would be several segments,
perhaps another mapping's sub-resource) is looked up in the list by its exact name.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import quote

from relaysync.cli._client import MasterClient
from relaysync.errors import NotFound

_PLAIN = re.compile(r"[A-Za-z0-9._-]+")  # what goes into a path segment unquoted
_KINDS = {"mappings": "mapping", "nm-jobs": "N:M job"}


def named_path(client: MasterClient, collection: str, name: str) -> str:
    """/api/<collection>/<id or name> of the item named (or numbered) `name`.

    Raises:
        NotFound: a name with a "/" that no item has.
    """
    if _PLAIN.fullmatch(name):
        return f"/api/{collection}/{name}"
    if "/" not in name:
        return f"/api/{collection}/{quote(name, safe='')}"
    return f"/api/{collection}/{find_named(client, collection, name)['id']}"


def find_named(client: MasterClient, collection: str, name: str) -> dict[str, Any]:
    """The item of `collection` named (or numbered) `name`.

    Raises:
        NotFound: no such item.
    """
    if "/" not in name:
        found: dict[str, Any] = client.get(named_path(client, collection, name))
        return found
    for item in client.get(f"/api/{collection}"):
        if item.get("name") == name:
            return dict(item)
    raise NotFound(_KINDS.get(collection, collection), name)
