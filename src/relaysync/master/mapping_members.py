"""Mapping members: whom a mapping's reports may come from, cached by the store's config epoch.

The control server (master/control.py) believes what a link reports only for the node's own
part in a mapping; it asks here, per message, without a store read while nothing changed.
"""

from __future__ import annotations

from collections.abc import Callable

import anyio

from relaysync.master.store.store import Store

Members = tuple[str, frozenset[str]]  # a mapping's source node and target nodes


class MappingMembers:
    """The members of every mapping as of a config epoch, read again when a check misses."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._cached: tuple[int, dict[int, Members]] | None = None  # (config epoch, by mapping id)

    def forget(self) -> None:
        """Drop the cache (callable from any thread): a positive answer is not checked against
        the epoch, so a target removed from a mapping would otherwise still be believed."""
        self._cached = None

    async def allow(self, mapping_id: int, allowed: Callable[[Members], bool]) -> bool:
        """Whether `allowed` holds for the mapping's members; on a miss, the members are read
        again if the config epoch moved since (a mapping created or edited meanwhile)."""
        cached = self._cached
        found = cached[1].get(mapping_id) if cached is not None else None
        if found is not None and allowed(found):
            return True
        members = await anyio.to_thread.run_sync(self._read)
        found = members.get(mapping_id)
        return found is not None and allowed(found)

    def _read(self) -> dict[int, Members]:
        """The mappings' members as of the store's config epoch (in a worker thread)."""
        epoch = self.store.epoch()  # read first: members read after it are at least that new
        cached = self._cached
        if cached is not None and cached[0] == epoch:
            return cached[1]
        members = self.store.mapping_members()
        self._cached = (epoch, members)
        return members
