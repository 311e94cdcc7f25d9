"""Which nodes may hold a control link: registration of known servers, and revocation.

A node joins through POST /api/join (a row in `servers` from then on); its control link only
updates that row. A server removed by an operator is recorded in `revoked_nodes`, so its
certificate, still valid for years, is refused from then on. A server revoked while mappings
still use it (a stolen key: `revoke_in_use`) is recorded there too, but keeps its row, down,
until an operator changes those mappings and removes it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from relaysync.errors import NodeRemoved
from relaysync.master.store.models import (
    Mapping,
    MappingTarget,
    RevokedNode,
    Server,
    ServerCertificate,
)


def check_not_revoked(session: Session, node_id: str) -> None:
    """Raise NodeRemoved if `node_id` was removed from the fleet (or revoked in place: its row
    stays while mappings name it, and its agent is told it was revoked, not removed)."""
    revoked = session.get(RevokedNode, node_id)
    if revoked is not None:
        how = "revoked by an operator" if session.get(Server, node_id) else "removed from the fleet"
        raise NodeRemoved(node_id[:16], f"server {revoked.name!r} was {how}")


def register(
    session: Session,
    node_id: str,
    *,
    region: str,
    group: str,
    address: str,
    now: float,
    bump_epoch: Callable[[Session], None],
    cert_not_after: float | None = None,
) -> Server:
    """A known node's control link is up: note its address (and region and group, unless an
    operator placed it) and its certificate's expiry (None: unknown, the one noted stays), and
    mark it up.

    Raises:
        NodeRemoved: the node was removed from the fleet, or never joined this master.
    """
    check_not_revoked(session, node_id)
    # Locked (PostgreSQL: FOR UPDATE) so that a deletion cannot slip in between.
    row = session.get(Server, node_id, with_for_update=True)
    if row is None:
        raise NodeRemoved(
            node_id[:16], "this master does not know it: removed, or joined another master"
        )
    if row.address != address:
        bump_epoch(session)  # peers address it by its address
    row.address = address
    if not row.topology_locked:  # the router re-plans on the registration that follows
        row.region, row.group_name = region, group
    row.state, row.last_seen = "up", now
    if cert_not_after is not None:
        session.merge(ServerCertificate(node_id=node_id, not_after=cert_not_after))
    session.flush()
    return row


def revoke(session: Session, row: Server, now: float) -> None:
    """Forget a server and refuse its certificate from now on (its name may join again)."""
    session.merge(RevokedNode(node_id=row.node_id, name=row.name, revoked_at=now))
    session.execute(delete(ServerCertificate).where(ServerCertificate.node_id == row.node_id))
    session.delete(row)


REVOKED_REASON = "server revoked by an operator"  # a failed target's reason, as the API shows it


@dataclass(frozen=True, slots=True, kw_only=True)
class Revocation:
    """A server revoked in place, and the mappings that still name it."""

    node_id: str
    name: str
    revoked_at: float
    target_of: tuple[int, ...]  # mapping ids: the router leaves it out of them (failed)
    source_of: tuple[str, ...]  # mapping names: their targets no longer take its data


def revoke_in_use(session: Session, row: Server, now: float) -> Revocation:
    """Refuse a server's certificate from now on, whatever uses it: its row stays (mappings
    name it), marked down; `peers_of` no longer names it to any agent."""
    session.merge(RevokedNode(node_id=row.node_id, name=row.name, revoked_at=now))
    row.state = "down"
    target_of = session.scalars(
        select(MappingTarget.mapping_id)
        .where(MappingTarget.node_id == row.node_id)
        .order_by(MappingTarget.mapping_id)
    ).all()
    source_of = session.scalars(
        select(Mapping.name).where(Mapping.source_node == row.node_id).order_by(Mapping.name)
    ).all()
    return Revocation(
        node_id=row.node_id,
        name=row.name,
        revoked_at=now,
        target_of=tuple(target_of),
        source_of=tuple(source_of),
    )


def cert_not_after(session: Session, node_id: str) -> float | None:
    """When the node's certificate expires (unix time); None until its control link showed it."""
    cert = session.get(ServerCertificate, node_id)
    return None if cert is None else cert.not_after


def cert_expiries(session: Session) -> dict[str, float]:
    """Every server's certificate expiry that a control link showed, by node id."""
    rows = session.execute(select(ServerCertificate.node_id, ServerCertificate.not_after))
    return {node_id: not_after for node_id, not_after in rows}


def mapping_members(session: Session) -> dict[int, tuple[str, frozenset[str]]]:
    """Every mapping's source node and target nodes, by mapping id."""
    targets: dict[int, set[str]] = {}
    for mapping_id, node_id in session.execute(
        select(MappingTarget.mapping_id, MappingTarget.node_id)
    ):
        targets.setdefault(mapping_id, set()).add(node_id)
    return {
        mapping_id: (source, frozenset(targets.get(mapping_id, ())))
        for mapping_id, source in session.execute(select(Mapping.id, Mapping.source_node))
    }
