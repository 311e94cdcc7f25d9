"""What the store reads for an agent's assignment (Store.assignment_for, master/store/store.py):
the mappings a node is source, target or relay of, and the peers they name."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from relaysync.master.store.models import Mapping, MappingTarget, RevokedNode, Server
from relaysync.master.store.types import MappingInfo
from relaysync.protocol.messages import PeerInfo


def mappings_of(session: Session, node_id: str, relay_for: Sequence[int]) -> list[Mapping]:
    """Every mapping `node_id` is source or target of, and those it only relays, by id."""
    as_target = select(MappingTarget.mapping_id).where(MappingTarget.node_id == node_id)
    return list(
        session.scalars(
            select(Mapping)
            .where(
                or_(
                    Mapping.source_node == node_id,
                    Mapping.id.in_(as_target),
                    Mapping.id.in_(list(relay_for)),
                )
            )
            .order_by(Mapping.id)
        )
    )


def peers_of(session: Session, infos: Sequence[MappingInfo], node_id: str) -> tuple[PeerInfo, ...]:
    """The other nodes of these mappings, with their addresses, by node id; a revoked one
    (still named by a mapping) is left out, so that no agent talks to it any more."""
    peer_ids = {i.source_node for i in infos} | {t.node_id for i in infos for t in i.targets}
    peer_ids.discard(node_id)
    peers = session.scalars(
        select(Server)
        .where(
            Server.node_id.in_(peer_ids),
            Server.node_id.not_in(select(RevokedNode.node_id)),
        )
        .order_by(Server.node_id)
    )
    return tuple(PeerInfo(node_id=p.node_id, name=p.name, address=p.address) for p in peers)
