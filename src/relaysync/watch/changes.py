"""Pending changes and journal records: what the watcher decided must be replicated."""

from __future__ import annotations

from typing import Literal

import msgspec

from relaysync.watch.manifest import Entry

Op = Literal["write", "delete", "mkdir", "symlink", "rename", "attr"]


class PendingChange(msgspec.Struct, frozen=True, kw_only=True):
    """One change to replicate, before it has a sequence number.

    `entry` is the new state for write/mkdir/symlink/attr, and the moved entry (at its new
    path) for rename. `base_hash` is the hash of the version being replaced, if known.
    """

    op: Op
    path: str
    new_path: str = ""
    entry: Entry | None = None
    base_hash: bytes = b""


class JournalRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A PendingChange made durable in the journal, with its sequence number and time."""

    seq: int
    op: Op
    path: str
    new_path: str = ""
    entry: Entry | None = None
    base_hash: bytes = b""
    time_ns: int = 0
