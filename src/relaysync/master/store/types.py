"""The store's value types: frozen snapshots of rows, handed out by Store and never tied to a session."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from relaysync.protocol.messages import MappingSpec, TargetSpec

ServerState = Literal["up", "down", "unknown"]
ServerHealth = Literal["ok", "unhealthy"]
Durability = Literal["safe", "fast"]
MappingState = Literal["enabled", "disabled", "source_revoked"]


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerInfo:
    node_id: str  # SHA-256 fingerprint of the node's certificate
    name: str
    region: str
    group: str
    address: str  # host:port of its peer server, "" until it registers
    state: ServerState
    last_seen: float | None  # unix time
    capacity_weight: int
    created_at: float
    health: ServerHealth = "ok"  # "unhealthy": over a threshold or failing a probe; no relay
    topology_locked: bool = (
        False  # an operator set region/group: the agent's registration no longer does
    )
    cert_not_after: float | None = None  # its certificate's expiry (unix time), once seen


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetInfo:
    node_id: str
    name: str
    path: str


@dataclass(frozen=True, slots=True, kw_only=True)
class MappingInfo:
    id: int
    name: str
    source_node: str
    source_name: str
    source_path: str
    targets: tuple[TargetInfo, ...]
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    durability: Durability
    enabled: bool  # as an operator set it
    created_at: float
    updated_at: float
    # Its source server is revoked: sent disabled whatever `enabled` says
    # (_assignments.idle_revoked_sources), until the mapping names another source.
    source_revoked: bool = False

    @property
    def state(self) -> MappingState:
        """What its agents run: "enabled"; "disabled" by an operator; "source_revoked": sent
        disabled although enabled, its source server being revoked."""
        if not self.enabled:
            return "disabled"
        return "source_revoked" if self.source_revoked else "enabled"

    def to_spec(self) -> MappingSpec:
        """Return the mapping as the control link sends it to agents."""
        return MappingSpec(
            mapping_id=self.id,
            name=self.name,
            source_node=self.source_node,
            source_path=self.source_path,
            targets=tuple(TargetSpec(node_id=t.node_id, path=t.path) for t in self.targets),
            include=self.include,
            exclude=self.exclude,
            durability=self.durability,
            enabled=self.enabled,
        )


@dataclass(frozen=True, slots=True, kw_only=True)
class WatermarkInfo:
    mapping_id: int
    source: str  # node id
    target: str  # node id
    seq: int  # every seq <= this is committed on the target, except open exceptions
    updated_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class TargetStatus:
    target: str  # node id
    target_name: str
    path: str
    watermark: int
    highest_seq: int  # the highest seq of the mapping's source known to the master
    # Sent and not committed: highest_seq - watermark, never negative; for a manual or reserved
    # mapping only up to what its releases cover (min(highest_seq, released_upto) - watermark).
    lag: int
    pending: int  # held back until the next release (manual, reserved); 0 for real-time ones
    open_exceptions: int
    updated_at: float | None


@dataclass(frozen=True, slots=True, kw_only=True)
class ChangeLogRow:
    mapping_id: int
    source_node: str
    seq: int
    op: str
    path: str
    size: int
    reported_at: float  # when the master first heard of it
    committed_targets: int  # targets whose watermark covers it with no open exception for it
    total_targets: int
    journal_id: str = ""  # the source journal its seq counts in ("": not named)
    replaced: bool = False  # its journal was replaced by a new one: history, never committed more


@dataclass(frozen=True, slots=True, kw_only=True)
class ExceptionInfo:
    id: int
    mapping_id: int
    source_node: str
    target_node: str
    seq: int  # 0 for catch-up work outside the journal
    path: str
    error: str
    at: float  # last failure
    attempts: int
    resolved_at: float | None
    journal_id: str = ""  # the source journal its seq counts in ("": not named)


@dataclass(frozen=True, slots=True, kw_only=True)
class AdvanceInfo:
    id: int
    mapping_id: int
    source_node: str
    target_node: str
    from_seq: int
    to_seq: int
    at: float
    files: int
    wire_bytes: int
    route: str  # server names the changes came through, source first, the target last ("" unknown)


@dataclass(frozen=True, slots=True, kw_only=True)
class CatchupInfo:
    mapping_id: int
    source_node: str
    target_node: str
    files: int
    bytes: int
    updated_at: float


@dataclass(frozen=True, slots=True, kw_only=True)
class JoinTokenInfo:
    id: str  # the first 12 hex characters of its SHA-256, more where two tokens share them
    created_at: float
    expires_at: float | None  # unix time; None = never
    expired: bool  # kept and listed until revoked, but refused by check_join_token
    created_by: str | None  # "admin" or "api:<id>"; None: created before this was recorded


@dataclass(frozen=True, slots=True, kw_only=True)
class ApiTokenInfo:
    id: int
    name: str  # who or what uses it
    created_at: float
    scope: str  # auth.tokens.TokenScope: "read" or "admin"
    created_by: str | None  # "admin" or "api:<id>"; None: created before this was recorded
