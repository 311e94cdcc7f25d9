"""REST resource /api/topology: the fleet as regions > groups > servers, with capacity and state."""

from __future__ import annotations

from pydantic import BaseModel

from relaysync.master.api._context import Context


class TopologyServer(BaseModel):
    name: str
    node_id: str
    capacity_weight: int
    state: str  # up, down or unknown
    health: str
    topology_locked: bool


class TopologyGroup(BaseModel):
    name: str
    servers: list[TopologyServer]


class TopologyRegion(BaseModel):
    name: str
    groups: list[TopologyGroup]


class TopologyOut(BaseModel):
    regions: list[TopologyRegion]


def get_topology(context: Context) -> TopologyOut:
    """Every server, by region, group and name."""
    tree: dict[str, dict[str, list[TopologyServer]]] = {}
    for s in context.store.list_servers():
        tree.setdefault(s.region, {}).setdefault(s.group, []).append(
            TopologyServer(
                name=s.name,
                node_id=s.node_id,
                capacity_weight=s.capacity_weight,
                state=s.state,
                health=s.health,
                topology_locked=s.topology_locked,
            )
        )
    return TopologyOut(
        regions=[
            TopologyRegion(
                name=region,
                groups=[
                    TopologyGroup(name=g, servers=servers) for g, servers in sorted(groups.items())
                ],
            )
            for region, groups in sorted(tree.items())
        ]
    )
