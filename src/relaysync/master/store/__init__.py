"""The master's store: servers, mappings, tokens, the config epoch and the job log."""

from relaysync.master.store._engine import store_unavailable
from relaysync.master.store.store import Store
from relaysync.master.store.types import (
    CatchupInfo,
    ChangeLogRow,
    ExceptionInfo,
    MappingInfo,
    ServerInfo,
    TargetInfo,
    TargetStatus,
    WatermarkInfo,
)

__all__ = [
    "CatchupInfo",
    "ChangeLogRow",
    "ExceptionInfo",
    "MappingInfo",
    "ServerInfo",
    "Store",
    "TargetInfo",
    "TargetStatus",
    "WatermarkInfo",
    "store_unavailable",
]
