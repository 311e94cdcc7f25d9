"""REST resource /api/servers: the fleet's servers and their state."""

from __future__ import annotations

import logging
import time

from pydantic import BaseModel, ConfigDict, Field, computed_field

from relaysync.master.api._context import Context
from relaysync.master.api._limits import InputModel
from relaysync.master.events import EventType

logger = logging.getLogger(__name__)


class ServerOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    node_id: str  # SHA-256 of the node's certificate
    name: str
    region: str
    group: str
    address: str  # host:port of its peer server
    state: str  # up, down or unknown
    last_seen: float | None  # unix time
    capacity_weight: int
    created_at: float
    health: str = "ok"  # ok or unhealthy (over a threshold or failing a probe: not a relay)
    topology_locked: bool = (
        False  # set by an operator's edit: the agent's registration no longer moves it
    )
    # When its certificate expires (unix time), as its last control link showed; None before.
    # The node id is the certificate's hash: a node re-joins (a new token) before this date.
    cert_not_after: float | None = None

    @computed_field  # type: ignore[prop-decorator]
    @property
    def cert_expires_in_s(self) -> float | None:
        """Seconds left on its certificate (negative: expired), as of this answer."""
        return None if self.cert_not_after is None else round(self.cert_not_after - time.time())


def list_servers(context: Context) -> list[ServerOut]:
    """Every server, by name."""
    return [ServerOut.model_validate(s) for s in context.store.list_servers()]


def get_server(name: str, context: Context) -> ServerOut:
    """One server, by name or node id."""
    return ServerOut.model_validate(context.store.get_server(name))


def delete_server(name: str, context: Context) -> None:
    """Forget a server that no mapping uses, so that its name can join again."""
    info = context.store.get_server(name)
    context.store.delete_server(info.node_id)
    context.changed(EventType.SERVER_REMOVED, node_id=info.node_id, name=info.name)


class RevocationOut(BaseModel):
    node_id: str
    name: str
    revoked_at: float  # unix time
    failed_in: list[int]  # ids of the mappings it is now a failed target of
    source_of: list[str]  # names of the mappings whose source it is: their targets refuse it


def revoke_server(name: str, context: Context) -> RevocationOut:
    """Refuse a server's certificate at once, even while mappings use it (a stolen key): its
    control link is closed, it stays listed (down) and is a failed target in its mappings, so
    an operator sees it there; DELETE it once no mapping names it."""
    revocation = context.store.revoke_server(name)
    context.router.load()  # its failed targets and its state, from the store
    context.router.refresh(f"{revocation.name} revoked", push=True)
    context.changed(EventType.SERVER_REVOKED, node_id=revocation.node_id, name=revocation.name)
    logger.warning(
        "server %s revoked by an operator: its certificate is refused from now on",
        revocation.name,
        extra={"failed_in": revocation.target_of, "source_of": revocation.source_of},
    )
    return RevocationOut(
        node_id=revocation.node_id,
        name=revocation.name,
        revoked_at=revocation.revoked_at,
        failed_in=list(revocation.target_of),
        source_of=list(revocation.source_of),
    )


class TopologyPatch(InputModel):
    region: str | None = Field(default=None, description="region name (A-Z a-z 0-9 . _ -)")
    group: str | None = Field(default=None, description="group name within the region")
    capacity_weight: int | None = Field(
        default=None, ge=1, description="relative share of relaying, >= 1"
    )
    locked: bool | None = Field(
        default=None, description="false: the agent's registered region/group apply again"
    )


def patch_server(name: str, body: TopologyPatch, context: Context) -> ServerOut:
    """Place a server in the topology; it wins over the region and group its agent registers with."""
    info = context.store.set_server_topology(
        name,
        region=body.region,
        group=body.group,
        capacity_weight=body.capacity_weight,
        locked=body.locked,
    )
    context.router.topology_changed(f"{info.name} moved by an operator")
    context.changed(
        EventType.SERVER_CHANGED,
        node_id=info.node_id,
        name=info.name,
        region=info.region,
        group=info.group,
        capacity_weight=info.capacity_weight,
    )
    return ServerOut.model_validate(info)
