"""The master's store: servers, mappings, tokens, the config epoch and the job log."""

from relaysync.master.store._engine import store_unavailable
from relaysync.master.store.store import Store
from relaysync.master.store.types import (
    ApiTokenInfo,
    CatchupInfo,
    ChangeLogRow,
    ExceptionInfo,
    JoinTokenInfo,
    MappingInfo,
    ServerInfo,
    TargetInfo,
    TargetStatus,
    WatermarkInfo,
)

__all__ = [
    "ApiTokenInfo",
    "CatchupInfo",
    "ChangeLogRow",
    "ExceptionInfo",
    "JoinTokenInfo",
    "MappingInfo",
    "ServerInfo",
    "Store",
    "TargetInfo",
    "TargetStatus",
    "WatermarkInfo",
    "store_unavailable",
]
