"""The master's store: servers, mappings, tokens, the config epoch and the job log, on SQLite or PostgreSQL.

Every method is synchronous and runs one transaction; async callers use anyio.to_thread.

Error handling:
    Bad input raises ConfigError or NotFound and changes nothing; database failures raise
    StoreError naming the operation.

Resource handling:
    One engine (a connection pool) per Store; close() disposes of it.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session, sessionmaker

from relaysync.errors import ConfigError, NodeRemoved, NotFound
from relaysync.master.store import _assignments, _mappings, _servers
from relaysync.master.store._engine import WRITE_OPTION, make_engine, map_db_errors
from relaysync.master.store._joblog_store import JobLogStore
from relaysync.master.store._modes import ModeStore
from relaysync.master.store._monitoring import MonitoringStore
from relaysync.master.store._nmjobs import NmJobStore
from relaysync.master.store._policies import PolicyStore, secrets_for
from relaysync.master.store._purge_queue import PurgeQueueStore
from relaysync.master.store._retention import RetentionStore
from relaysync.master.store._routing import RoutingStore, check_capacity, check_topology_name
from relaysync.master.store._sites import SiteStore
from relaysync.master.store._stats import StatsStore
from relaysync.master.store._tokens import TokenStore
from relaysync.master.store.models import (
    ConfigEpoch,
    Mapping,
    MappingTarget,
    RevokedNode,
    Server,
)
from relaysync.master.store.types import MappingInfo, ServerInfo
from relaysync.protocol.messages import Assignment, MappingSpec

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
SERVER_STATES = ("up", "down", "unknown")


def _server_info(row: Server, cert_not_after: float | None = None) -> ServerInfo:
    return ServerInfo(
        node_id=row.node_id,
        name=row.name,
        region=row.region,
        group=row.group_name,
        address=row.address,
        state=row.state,  # type: ignore[arg-type]
        last_seen=row.last_seen,
        capacity_weight=row.capacity_weight,
        created_at=row.created_at,
        health=row.health,  # type: ignore[arg-type]
        topology_locked=row.topology_locked,
        cert_not_after=cert_not_after,
    )


def _bump_epoch(session: Session) -> None:
    session.execute(
        update(ConfigEpoch).where(ConfigEpoch.id == 1).values(epoch=ConfigEpoch.epoch + 1)
    )


def _next_mapping_id(session: Session) -> int:
    """A mapping id never given before, even to a deleted mapping: agents keep per-mapping state
    (journals, manifests, watermarks) under the id, so a reused id would inherit a stranger's.
    The UPDATE locks the row, so concurrent creations get different ids."""
    session.execute(
        update(ConfigEpoch)
        .where(ConfigEpoch.id == 1)
        .values(last_mapping_id=ConfigEpoch.last_mapping_id + 1)
    )
    return int(session.scalar(select(ConfigEpoch.last_mapping_id).where(ConfigEpoch.id == 1)) or 0)


def _read_epoch(session: Session) -> int:
    return int(session.scalar(select(ConfigEpoch.epoch).where(ConfigEpoch.id == 1)) or 0)


class Store(SiteStore, PurgeQueueStore, TokenStore, JobLogStore):
    """The master's database, by URL: `sqlite:///path.db` or `postgresql+psycopg://...`."""

    def __init__(self, url: str) -> None:
        self.url = url
        self._engine = make_engine(url)
        self._read_sessions = sessionmaker(self._engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(
            self._engine.execution_options(**{WRITE_OPTION: True}), expire_on_commit=False
        )
        self.monitoring = MonitoringStore(self._read, self._write)  # figures, rules, alert log
        # link policies per network section or server pair
        self.policies = PolicyStore(self._read, self._write, _bump_epoch, _mappings.resolve_server)
        # transmission modes: real-time, manual, reserved (schedules and release counters)
        self.modes = ModeStore(self._read, self._write, _bump_epoch)
        self.stats = StatsStore(
            self._read
        )  # job-log statistics by server, group, region, mapping, day
        # relay routes: auto/manual, fan-out, recovery policies, failed targets, recovery jobs
        self.routing = RoutingStore(self._read, self._write, _bump_epoch)
        # N:M jobs: member mappings per source, the newest-mtime rule, conflicts reported
        self.nm_jobs = NmJobStore(self._read, self._write, _bump_epoch, _next_mapping_id)
        # job-log retention: days kept per kind of history, and the batched pruning
        self.retention = RetentionStore(self._read, self._write)

    # --- Lifecycle ---

    def migrate(self) -> None:
        """Bring the schema to the newest revision of every branch (alembic upgrade heads)."""
        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        with map_db_errors("migrate"), self._engine.begin() as conn:
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, "heads")
        logger.info("store schema is up to date", extra={"dialect": self._engine.dialect.name})

    def close(self) -> None:
        """Close every pooled connection."""
        self._engine.dispose()

    @contextmanager
    def _read(self, operation: str) -> Iterator[Session]:
        with map_db_errors(operation), self._read_sessions.begin() as session:
            yield session

    @contextmanager
    def _write(self, operation: str) -> Iterator[Session]:
        with map_db_errors(operation), self._write_sessions.begin() as session:
            yield session

    def epoch(self) -> int:
        """Return the config epoch: it grows with every change to mappings, targets or addresses."""
        with self._read("epoch") as session:
            return _read_epoch(session)

    def bump_epoch(self) -> int:
        """Bump the config epoch (e.g. after a re-plan, so that agents get the new routes); return it."""
        with self._write("bump epoch") as session:
            _bump_epoch(session)
            return _read_epoch(session)

    # --- Servers ---

    def upsert_server(
        self, *, node_id: str, name: str, region: str, group: str, address: str
    ) -> ServerInfo:
        """Add a server or update its name, region, group and address.

        Once an operator has set a server's topology (set_server_topology), the region and group
        an agent registers with no longer replace it.

        Raises:
            ConfigError: another node already has this name (in any case).
            NodeRemoved: the node was removed from the fleet.
        """
        with self._write("upsert server") as session:
            _servers.check_not_revoked(session, node_id)
            other = session.scalars(  # DNS names: web1 and Web1 are one name
                select(Server).where(
                    func.lower(Server.name) == name.lower(), Server.node_id != node_id
                )
            ).first()
            if other is not None:
                raise ConfigError(f"server name {name!r} is already used by node {other.node_id}")
            row = session.get(Server, node_id)
            if row is None:
                row = Server(
                    node_id=node_id, state="unknown", capacity_weight=1, created_at=time.time()
                )
                session.add(row)
            elif row.address != address or row.name != name:
                _bump_epoch(session)  # peers address it by name and address
            row.name, row.address = name, address
            if not row.topology_locked:  # the router re-plans on the registration that follows
                row.region, row.group_name = region, group
            session.flush()
            return _server_info(row)

    def register_server(
        self,
        node_id: str,
        *,
        region: str,
        group: str,
        address: str,
        cert_not_after: float | None = None,
    ) -> ServerInfo:
        """A joined node's control link is up: record its address (and region and group, unless
        an operator placed it) and its certificate's expiry, and mark it up. Its name is the one
        it joined with.

        Raises:
            NodeRemoved: the node was removed from the fleet, or never joined.
        """
        with self._write("register server") as session:
            row = _servers.register(
                session,
                node_id,
                region=region,
                group=group,
                address=address,
                cert_not_after=cert_not_after,
                now=time.time(),
                bump_epoch=_bump_epoch,
            )
            return _server_info(row, _servers.cert_not_after(session, node_id))

    def is_revoked(self, node_id: str) -> bool:
        """Whether the node was removed from the fleet (DELETE /api/servers)."""
        with self._read("is revoked") as session:
            try:
                _servers.check_not_revoked(session, node_id)
            except NodeRemoved:
                return True
            return False

    def mapping_members(self) -> dict[int, tuple[str, frozenset[str]]]:
        """Every mapping's (source node, target nodes), by mapping id: whom its reports may come from."""
        with self._read("mapping members") as session:
            return _servers.mapping_members(session)

    def set_server_state(
        self, node_id: str, state: str, last_seen: float, *, unless_seen_since: float | None = None
    ) -> bool:
        """Record that a server is up, down or unknown, as last seen at `last_seen` (unix time).

        Args:
            unless_seen_since: leave the server as it is if it was last seen at or after this
                time (checked in the same transaction: a registration that just wrote wins).

        Returns:
            Whether the state was written.

        Raises:
            ConfigError: an unknown state.
            NotFound: no such server.
        """
        if state not in SERVER_STATES:
            raise ConfigError(f"server state {state!r} must be one of {', '.join(SERVER_STATES)}")
        with self._write("set server state") as session:
            # Locked (PostgreSQL: FOR UPDATE) so that a registration cannot slip in between.
            row = session.get(Server, node_id, with_for_update=unless_seen_since is not None)
            if row is None:
                raise NotFound("Server", node_id)
            if state == "up" and session.get(RevokedNode, node_id) is not None:
                return False  # revoked while its link was up: down for good
            if (
                unless_seen_since is not None
                and row.last_seen is not None
                and row.last_seen >= unless_seen_since
            ):
                return False
            row.state, row.last_seen = state, last_seen
            return True

    def set_server_topology(
        self,
        name_or_node_id: str,
        *,
        region: str | None = None,
        group: str | None = None,
        capacity_weight: int | None = None,
        locked: bool | None = None,
    ) -> ServerInfo:
        """An operator places a server: region, group, capacity weight (others keep their value).

        Any edit locks the server's topology against the agent's registration, unless `locked`
        is given: `locked=False` lets the agent's region and group apply again.

        Raises:
            ConfigError: a bad region or group name, or a capacity weight below 1.
            NotFound: no such server.
        """
        if region is not None:
            check_topology_name(region, "region")
        if group is not None:
            check_topology_name(group, "group")
        if capacity_weight is not None:
            check_capacity(capacity_weight)
        with self._write("set server topology") as session:
            row = _mappings.resolve_server(session, name_or_node_id)
            row.region = region if region is not None else row.region
            row.group_name = group if group is not None else row.group_name
            row.capacity_weight = (
                capacity_weight if capacity_weight is not None else row.capacity_weight
            )
            row.topology_locked = locked if locked is not None else True
            _bump_epoch(session)
            session.flush()
            return _server_info(row)

    def list_servers(self) -> list[ServerInfo]:
        """Return every server, by name."""
        with self._read("list servers") as session:
            expiries = _servers.cert_expiries(session)
            return [
                _server_info(r, expiries.get(r.node_id))
                for r in session.scalars(select(Server).order_by(Server.name))
            ]

    def get_server(self, name_or_node_id: str) -> ServerInfo:
        """Return one server by name or node id.

        Raises:
            NotFound: no such server.
        """
        with self._read("get server") as session:
            row = _mappings.resolve_server(session, name_or_node_id)
            return _server_info(row, _servers.cert_not_after(session, row.node_id))

    def delete_server(self, name_or_node_id: str) -> None:
        """Forget a server and revoke its certificate (it may join again, with a new key, under
        its name).

        Raises:
            ConfigError: a mapping still uses it as source or target.
            NotFound: no such server.
        """
        with self._write("delete server") as session:
            row = _mappings.resolve_server(session, name_or_node_id)
            used = session.scalars(
                select(Mapping.name)
                .where(
                    or_(
                        Mapping.source_node == row.node_id,
                        Mapping.id.in_(
                            select(MappingTarget.mapping_id).where(
                                MappingTarget.node_id == row.node_id
                            )
                        ),
                    )
                )
                .order_by(Mapping.name)
            ).all()
            if used:
                raise ConfigError(
                    f"server {row.name!r} is still used by mappings {', '.join(used)}; change them first"
                )
            _servers.revoke(session, row, time.time())

    def revoke_server(self, name_or_node_id: str) -> _servers.Revocation:
        """Refuse a server's certificate from now on, even while mappings use it (a stolen
        key): it stays listed, down, and is marked failed as a target of its mappings (the
        router plans around it); remove it (delete_server) once they no longer name it.

        Raises:
            NotFound: no such server.
        """
        with self._write("revoke server") as session:
            row = _mappings.resolve_server(session, name_or_node_id)
            revocation = _servers.revoke_in_use(session, row, time.time())
            _bump_epoch(session)  # its peers no longer name it
        for mapping_id in revocation.target_of:  # after: the certificate is refused first
            self.routing.mark_failed(
                mapping_id, revocation.node_id, revocation.revoked_at, _servers.REVOKED_REASON
            )
        return revocation

    # --- Mappings ---

    def create_mapping(
        self,
        *,
        name: str,
        source: str,
        source_path: str,
        targets: Sequence[tuple[str, str]],
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        durability: str = "safe",
        enabled: bool = True,
    ) -> MappingInfo:
        """Create a mapping from `source`:`source_path` to each (server, path) in `targets`.

        Servers are given by name or node id.

        Raises:
            ConfigError: a bad name, path, pattern, durability or target.
            NotFound: a server that does not exist.
        """
        draft = _mappings.MappingDraft(
            name=name,
            source=source,
            source_path=source_path,
            targets=tuple((str(s), str(p)) for s, p in targets),
            include=tuple(include),
            exclude=tuple(exclude),
            durability=durability,
            enabled=enabled,
        )
        with self._write("create mapping") as session:
            resolved = _mappings.validate(session, draft, mapping_id=None)
            now = time.time()
            row = Mapping(id=_next_mapping_id(session), created_at=now, updated_at=now)
            session.add(row)
            _mappings.apply(session, row, resolved, now)
            _bump_epoch(session)
            return _mappings.infos(session, [row])[0]

    def update_mapping(self, mapping_id: int | str, **fields: Any) -> MappingInfo:
        """Change some fields of a mapping (those of create_mapping, plus `enabled`).

        Raises:
            ConfigError: an unknown field or a value create_mapping would refuse.
            NotFound: no such mapping, or a server that does not exist.
        """
        unknown = set(fields) - _mappings.UPDATABLE
        if unknown:
            raise ConfigError(
                f"mapping fields {sorted(unknown)} cannot be changed; use {sorted(_mappings.UPDATABLE)}"
            )
        if "targets" in fields:
            fields["targets"] = tuple((str(s), str(p)) for s, p in fields["targets"])
        for key in ("include", "exclude"):
            if key in fields:
                fields[key] = _mappings.check_patterns(fields[key], key)
        with self._write("update mapping") as session:
            row = _mappings.find_mapping(session, mapping_id)
            draft = _mappings.draft_of(session, row)
            draft = _mappings.MappingDraft(**{**_asdict(draft), **fields})
            resolved = _mappings.validate(session, draft, mapping_id=row.id)
            _mappings.apply(session, row, resolved, time.time())
            _bump_epoch(session)
            return _mappings.infos(session, [row])[0]

    def delete_mapping(self, mapping_id: int | str) -> None:
        """Delete a mapping, its targets and its job log.

        Raises:
            NotFound: no such mapping.
        """
        with self._write("delete mapping") as session:
            row = _mappings.find_mapping(session, mapping_id)
            session.execute(delete(Mapping).where(Mapping.id == row.id))
            _bump_epoch(session)

    def list_mappings(self) -> list[MappingInfo]:
        """Return every mapping, by id."""
        with self._read("list mappings") as session:
            rows = list(session.scalars(select(Mapping).order_by(Mapping.id)))
            return _mappings.infos(session, rows)

    def get_mapping(self, id_or_name: int | str) -> MappingInfo:
        """Return one mapping by id or name.

        Raises:
            NotFound: no such mapping.
        """
        with self._read("get mapping") as session:
            return _mappings.infos(session, [_mappings.find_mapping(session, id_or_name)])[0]

    def assignment_for(
        self,
        node_id: str,
        relay_for: Sequence[int] = (),
        route: Callable[[MappingSpec], MappingSpec] | None = None,
    ) -> Assignment:
        """Return what `node_id` must run: every mapping it is source or target of, and its peers.

        `relay_for` adds mappings the node only relays (a manual route through a non-target); the
        router (master/router.py) fills in routes and drops failed targets afterwards; given as
        `route`, it routes each spec first, so that each target's link policy is the one of the hop
        it is fed by (its parent's section or pair), not the source's.
        A mapping whose source is revoked goes out disabled (_assignments.idle_revoked_sources).
        An unknown node gets an empty assignment at the current epoch.
        """
        with self._read("assignment") as session:
            # The epoch is read first: a change committed meanwhile then arrives with a newer
            # epoch in the next push, never as stale mappings labelled with the newer epoch.
            epoch = _read_epoch(session)
            infos = _mappings.infos(session, _assignments.mappings_of(session, node_id, relay_for))
            specs = [route(i.to_spec()) if route else i.to_spec() for i in infos]
            specs = list(self.policies.apply(session, specs))
            specs = list(self.nm_jobs.apply(session, list(self.modes.apply(session, specs))))
            specs = _assignments.idle_revoked_sources(session, specs)
            return Assignment(
                epoch=epoch,
                mappings=tuple(secrets_for(spec, node_id) for spec in specs),
                peers=_assignments.peers_of(session, infos, node_id),
            )


def _asdict(draft: _mappings.MappingDraft) -> dict[str, Any]:
    return {name: getattr(draft, name) for name in draft.__slots__}
