"""What the store reads for an agent's assignment (Store.assignment_for, master/store/store.py):
the mappings a node is source, target or relay of, and the peers they name.

A revoked node (POST /api/servers/{name}/revoke: a stolen key) stays named by its mappings until
an operator changes them, but no agent may take its data: it is no peer of anyone, and a
mapping it is the source of goes out disabled, so that its targets (and the relays on its
routes) stop serving it. They keep their files and their manifests; the mapping is served
again once it names another source (the machine joined again under a new key, or a spare).
Peers have no revocation list: without this, the certificate stayed good to them for years."""

from __future__ import annotations

from collections.abc import Sequence

import msgspec
from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from relaysync.master.store.models import Mapping, MappingTarget, RevokedNode, Server
from relaysync.master.store.types import MappingInfo
from relaysync.protocol.messages import MappingSpec, PeerInfo


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


def idle_revoked_sources(session: Session, specs: Sequence[MappingSpec]) -> list[MappingSpec]:
    """The specs, those whose source is revoked disabled: every node stops serving them (a
    target retires its folder and refuses the source; the source, were it still told, stops)."""
    sources = {s.source_node for s in specs}
    revoked = set(
        session.scalars(select(RevokedNode.node_id).where(RevokedNode.node_id.in_(sources)))
    )
    return [
        msgspec.structs.replace(s, enabled=False) if s.source_node in revoked else s for s in specs
    ]
