"""Link ends: what the agent gives a target link (its source folder, target address, failure hook)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from relaysync.transfer.compare import Unreadable
from relaysync.watch.journal import Journal
from relaysync.watch.manifest import Manifest


class SourceFolder(Protocol):
    """What a link needs from the source side of its mapping (agent/source.py)."""

    mapping_id: int
    root: Path
    journal: Journal
    manifest: Manifest
    applied_seq: int  # journal records up to here are reflected in the manifest
    realtime: bool  # False: manual/reserved, only released records go, and no compare of its own
    # True while a first scan is still journaling the folder: a link compares only once it ended
    # (its records reach every target anyway; a comparison meanwhile hashes a partial manifest).
    scanning: bool

    @property
    def send_limit(self) -> int: ...

    async def wait_for_records(self, after_seq: int, timeout_s: float) -> None: ...

    def on_ack(self, target_node: str, watermark: int) -> None: ...

    def on_open(self, target_node: str, watermark: int) -> None: ...

    def on_owed(self, target_node: str, owed: bool) -> None: ...

    def below(self, child: str) -> frozenset[str]: ...

    def unreadable_now(self) -> Unreadable: ...


FailureFn = Callable[[str, str, int], None]  # (child node id, error, consecutive failures)


@dataclass
class TargetAddress:
    node_id: str
    name: str
    resolve: Callable[[], str]  # the target's current peer address (it may move on restart)
    dialled: str = ""  # the address the last session dialled (a failed hop is reported with it)

    def dial(self) -> str:
        """The target's current address, remembered as the one dialled ("" if it has none)."""
        self.dialled = ""
        self.dialled = self.resolve()
        return self.dialled
