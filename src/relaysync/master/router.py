"""The re-planner: each mapping's distribution tree from topology, failures and routing settings.

The planner (routing/) is pure; the Router holds what it plans from and when to plan again:

- down nodes: servers whose control link is down (the store's server states, which the
  ControlServer keeps; rebuilt from the store after a master restart);
- failed hops {(mapping, parent, child): until}: a HopFailed with attempts >= 2 avoids the hop
  for HOP_FAILED_TTL_S, then it is tried again (in memory only; a restart forgets them);
- per (mapping, target) the time it became unreachable (down, or unreachable in the plan); after
  the mapping's `fail_after_s` the target is marked FAILED in the store (durable), an event is
  raised, and it is left out of the MappingSpec.targets every agent gets;
- recoveries: a failed target whose server is up again comes back per its recovery policy: at
  once, at the next run of a reserved schedule, or only when an operator asks (`recover`). Each
  recovery is a job in the store, finished when its watermark reaches the other targets'.

`routes_for` and `apply` are cheap: plans are cached per mapping and computed again only when
the inputs changed (a version counter covers topology, up/down, failed hops, failed targets and
settings; the key adds the mapping's source and targets). After a change, `refresh` plans every
mapping, logs and publishes each changed tree, and bumps the store's config epoch so that the
ControlServer pushes new assignments (its epoch check stays meaningful for AssignmentAck).
"Changed" is against the plan `refresh` last announced, not against the cache: `view` and
`routes_for` may plan a new version first (between a version bump and its refresh), and that
tree must still be pushed.
`route_epoch` is a counter seeded from the wall clock in milliseconds, so it keeps growing
across master restarts. Expiries, failures and recoveries (`tick`, `recover`) are in
_router_clock.py, mixed into Router.

Threading: every method may be called from any thread; one lock guards the state. Methods that
read or write the store block: call them from worker threads, not on the event loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass, field

import anyio

from relaysync.errors import RouteError, StoreError
from relaysync.master._router_clock import HOP_FAILED_TTL_S, HopKey, RouterClock, TargetKey
from relaysync.master.events import EventBus, EventType
from relaysync.master.store._recovery import FailedTarget, RecoveryJob
from relaysync.master.store._routing import RoutingSettings, node_of
from relaysync.master.store.store import Store
from relaysync.master.store.types import ServerInfo
from relaysync.protocol.messages import Assignment, MappingSpec, PeerInfo, RouteHop
from relaysync.routing.manual import manual_plan
from relaysync.routing.planner import Plan, plan_tree
from relaysync.routing.topology import Node

logger = logging.getLogger(__name__)

HOP_FAILED_ATTEMPTS = 2  # consecutive failed attempts of a hop before the master re-plans around it
TICK_S = 1.0  # failures, schedules and recoveries are checked this often


@dataclass(slots=True)
class _Cached:
    key: tuple[object, ...]
    plan: Plan
    routes: tuple[RouteHop, ...]
    route_epoch: int


@dataclass(frozen=True, slots=True, kw_only=True)
class RouteView:
    """A mapping's current routes and failure state, as GET /api/mappings/{id}/routes shows it."""

    mapping_id: int
    settings: RoutingSettings
    route_epoch: int
    source: str  # node id
    routes: tuple[RouteHop, ...]
    unreachable: tuple[str, ...]  # node ids the plan cannot reach (or down)
    unreachable_since: dict[str, float] = field(default_factory=dict)
    failed: tuple[FailedTarget, ...] = ()
    failed_hops: tuple[tuple[str, str, float, str], ...] = ()  # (parent, child, until, error)
    recoveries: tuple[RecoveryJob, ...] = ()  # running


class Router(RouterClock):
    """The master's failure state and the cache of every mapping's plan."""

    def __init__(
        self,
        store: Store,
        events: EventBus,
        *,
        clock: Callable[[], float] = time.time,
        on_change: Callable[[], None] | None = None,
        links_up: Callable[[], Collection[str]] | None = None,
    ) -> None:
        """
        Args:
            clock: unix time; tests pass a fake one.
            on_change: called after a re-plan bumped the config epoch (ControlServer.notify_change).
            links_up: node ids with a live control link; servers stored "up" without one are taken
                down LINK_GRACE_S after start (the master was down when their link dropped).
        """
        self.store, self.events = store, events
        self._clock = clock
        self.on_change = on_change
        self._links_up = links_up
        self._lock = threading.RLock()
        self._version = 0
        self._started_at = clock()
        self._route_seq = int(clock() * 1000)
        self._servers: dict[str, ServerInfo] = {}
        self._down: frozenset[str] = frozenset()
        self._up_since: dict[str, float] = {}
        self._settings: dict[int, RoutingSettings] = {}
        self._failed: dict[int, dict[str, FailedTarget]] = {}
        self._failed_hops: dict[HopKey, float] = {}
        self._hop_errors: dict[HopKey, str] = {}  # why each avoided hop failed last
        self._unreachable_since: dict[TargetKey, float] = {}
        self._recoveries: dict[int, RecoveryJob] = {}
        self._plans: dict[int, _Cached] = {}
        self._announced: dict[int, _Cached] = {}  # per mapping, the plan refresh last pushed
        self._loaded = False

    # --- State from the store ---

    def load(self) -> None:
        """(Re)build the state from the store: topology, up/down, settings, failed targets, recoveries."""
        servers = {s.node_id: s for s in self.store.list_servers()}
        settings = self.store.routing.all()
        failed: dict[int, dict[str, FailedTarget]] = {}
        for f in self.store.routing.failed():
            failed.setdefault(f.mapping_id, {})[f.node_id] = f
        running = {j.id: j for j in self.store.routing.running_recoveries()}
        with self._lock:
            self._set_servers(servers)
            self._settings, self._failed, self._recoveries = settings, failed, running
            self._version += 1
            self._loaded = True

    def _ensure_loaded(self) -> None:
        if not self._loaded:
            self.load()

    def _set_servers(self, servers: dict[str, ServerInfo]) -> None:
        now = self._clock()
        for node_id, s in servers.items():
            was_up = node_id in self._servers and node_id not in self._down
            if s.state == "up" and not was_up:
                self._up_since[node_id] = now  # failed targets on it may recover from now
        self._servers = servers
        self._down = frozenset(n for n, s in servers.items() if s.state != "up")

    def topology_changed(self, reason: str = "topology changed") -> None:
        """Servers changed (an edit, a registration, up or down): reload them and re-plan.

        Read under the lock: two agents coming up at once call this from two threads, and a
        snapshot read before the other's "up" must not be set after it (that server would stay
        down for the router, out of every plan, until the next change).
        """
        with self._lock:
            servers = {s.node_id: s for s in self.store.list_servers()}
            self._ensure_loaded()
            self._set_servers(servers)
            self._version += 1
        self.refresh(reason)

    def node_up(self, node_id: str) -> None:
        """A server's control link is up (the store already says so).

        Hops into it that failed while it was down are tried again at once: they failed because
        it was down, and its recovery should come from its group, not around it.
        """
        with self._lock:
            stale = [k for k in self._failed_hops if k[2] == node_id]
            for key in stale:
                del self._failed_hops[key]
                self._hop_errors.pop(key, None)
            if stale:
                self._version += 1
        self.topology_changed(f"{self._name(node_id)} up")

    def node_down(self, node_id: str) -> None:
        """A server's control link dropped (the store already says so)."""
        self.topology_changed(f"{self._name(node_id)} down")

    def settings_changed(self) -> None:
        """Routing settings or mappings changed (the API calls this): reload and re-plan."""
        settings = self.store.routing.all()
        with self._lock:
            self._ensure_loaded()
            self._settings = settings
            self._version += 1
        self.refresh("routing settings changed")

    # --- Reports from agents ---

    def hop_failed(
        self,
        mapping_id: int,
        parent: str,
        child: str,
        *,
        attempts: int,
        error: str,
        address: str = "",
    ) -> None:
        """`parent` could not stream mapping `mapping_id` to `child`; from the 2nd attempt, avoid
        the hop. Not when `address` (the one the parent dialled) is not the child's latest: the
        child came back elsewhere (a new port) and the parent gets that with its next assignment;
        avoiding the hop would leave the child unrouted for HOP_FAILED_TTL_S."""
        logger.warning(
            "mapping %s: hop %s > %s failed (attempt %s): %s",
            mapping_id,
            self._name(parent),
            self._name(child),
            attempts,
            error,
        )
        if attempts < HOP_FAILED_ATTEMPTS:
            return
        with self._lock:
            self._ensure_loaded()
            if child in self._down:
                return  # the child is down, not the hop: it is planned around already
            server = self._servers.get(child)
            if address and server is not None and server.address not in ("", address):
                logger.info(
                    "mapping %s: hop %s > %s not avoided: %s dialled %s, %s is at %s now",
                    *(mapping_id, self._name(parent), self._name(child), self._name(parent)),
                    *(address, self._name(child), server.address),
                )
                return
            known = (mapping_id, parent, child) in self._failed_hops
            self._failed_hops[(mapping_id, parent, child)] = self._clock() + HOP_FAILED_TTL_S
            self._hop_errors[(mapping_id, parent, child)] = error
            if not known:
                self._version += 1
        if not known:
            self.events.publish(
                EventType.HOP_FAILED,
                mapping_id=mapping_id,
                parent=self._name(parent),
                child=self._name(child),
                attempts=attempts,
                error=error,
            )
            self.refresh(f"hop {self._name(parent)}>{self._name(child)} failed: {error}")

    # --- Plans ---

    def routes_for(self, spec: MappingSpec) -> MappingSpec:
        """The spec with its routes and route_epoch filled in and its failed targets dropped."""
        with self._lock:
            self._ensure_loaded()
            cached = self._plan(spec)
            failed = self._failed.get(spec.mapping_id, {})
            fields = {f: getattr(spec, f) for f in spec.__struct_fields__}
            fields.update(
                targets=tuple(t for t in spec.targets if t.node_id not in failed),
                routes=cached.routes,
                route_epoch=cached.route_epoch,
            )
            return MappingSpec(**fields)

    def relay_mappings(self, node_id: str) -> list[int]:
        """Mappings whose cached routes pass through `node_id` (it may relay without being a target)."""
        with self._lock:
            return [
                m
                for m, c in self._plans.items()
                if any(node_id in (h.parent, h.child) for h in c.routes)
            ]

    def apply(self, assignment: Assignment, node_id: str) -> Assignment:
        """Route every mapping of one node's assignment; drop those it no longer takes part in."""
        specs, peers = [], {p.node_id: p for p in assignment.peers}
        parked: list[int] = []
        for spec in assignment.mappings:
            routed = self.routes_for(spec)
            hop_nodes = {n for h in routed.routes for n in (h.parent, h.child)}
            if (
                node_id != routed.source_node
                and node_id not in hop_nodes
                and all(t.node_id != node_id for t in routed.targets)
            ):
                parked.append(spec.mapping_id)  # a failed target: out of it until it recovers
                continue
            specs.append(routed)
            for n in hop_nodes - peers.keys() - {node_id}:
                server = self._servers.get(n)
                if server is not None:
                    peers[n] = PeerInfo(node_id=n, name=server.name, address=server.address)
        return Assignment(
            epoch=assignment.epoch,
            mappings=tuple(specs),
            peers=tuple(sorted(peers.values(), key=lambda p: p.node_id)),
            parked=(*assignment.parked, *parked),
        )

    def _plan(self, spec: MappingSpec) -> _Cached:
        """The cached plan of a spec, planned again if its inputs changed (a new route epoch if
        its routes changed)."""
        failed = self._failed.get(spec.mapping_id, {})
        targets = tuple(t.node_id for t in spec.targets if t.node_id not in failed)
        key = (spec.source_node, targets, self._version)
        cached = self._plans.get(spec.mapping_id)
        if cached is not None and cached.key == key:
            return cached
        plan = self._compute(spec.mapping_id, spec.source_node, targets, frozenset(failed))
        routes = tuple(
            RouteHop(parent=h.parent, child=h.child, level=str(h.level)) for h in plan.hops
        )
        changed = cached is None or cached.routes != routes
        if changed:
            self._route_seq += 1
        epoch = self._route_seq if changed or cached is None else cached.route_epoch
        new = self._plans[spec.mapping_id] = _Cached(key, plan, routes, epoch)
        if cached is None:  # a new mapping's first tree goes out with the mapping itself
            self._announced.setdefault(spec.mapping_id, new)
        return new

    def _compute(
        self, mapping_id: int, source: str, targets: tuple[str, ...], failed: frozenset[str]
    ) -> Plan:
        settings = self._settings.get(mapping_id) or RoutingSettings(mapping_id=mapping_id)
        hops = frozenset((p, c) for (m, p, c) in self._failed_hops if m == mapping_id)
        nodes = [self._node(t) for t in targets]
        if settings.mode == "manual":
            # The route names failed targets too: plan them as down, so their children are bypassed.
            known = {n: node_of(s) for n, s in self._servers.items()}
            try:
                plan = manual_plan(
                    self._node(source),
                    [*nodes, *map(self._node, failed)],
                    settings.hops,
                    known,
                    down=self._down | failed,
                    failed_hops=hops,
                    fanout=settings.fanout,
                )
                return Plan(
                    plan.source, plan.hops, tuple(n for n in plan.unreachable if n not in failed)
                )
            except RouteError as exc:  # servers or targets changed since the route was set
                logger.error(
                    "mapping %s: its manual route no longer holds (%s); planning it "
                    "automatically until it is fixed",
                    mapping_id,
                    exc,
                )
        return plan_tree(
            self._node(source), nodes, fanout=settings.fanout, down=self._down, failed_hops=hops
        )

    def _node(self, node_id: str) -> Node:
        server = self._servers.get(node_id)
        if server is None:  # not in the cached topology yet: plan it in a region of its own
            return Node(node_id=node_id, name=node_id[:16], region="", group="", capacity=1)
        return node_of(server)

    def _name(self, node_id: str) -> str:
        server = self._servers.get(node_id)
        return server.name if server is not None else node_id[:16]

    def refresh(self, reason: str, *, push: bool = False) -> None:
        """Plan every mapping; log and publish the changed trees; push them (epoch bump) if any.

        Args:
            push: push even if no tree changed (a target left out or back changes the specs).
        """
        specs = [i.to_spec() for i in self.store.list_mappings()]
        changed: list[tuple[MappingSpec, tuple[RouteHop, ...], _Cached]] = []
        with self._lock:
            self._ensure_loaded()
            now = self._clock()
            live: set[TargetKey] = set()
            for spec in specs:
                cached = self._plan(spec)
                before = self._announced.get(spec.mapping_id)
                if before is not None and before.route_epoch != cached.route_epoch:
                    changed.append((spec, before.routes, cached))
                self._announced[spec.mapping_id] = cached
                live |= self._track_unreachable(spec, cached.plan, now)
            for key in self._unreachable_since.keys() - live:
                del self._unreachable_since[key]
            for gone in self._plans.keys() - {s.mapping_id for s in specs}:
                del self._plans[gone]
            for gone in self._announced.keys() - {s.mapping_id for s in specs}:
                del self._announced[gone]
        for spec, old_routes, cached in changed:
            self._announce(spec, old_routes, cached, reason)
        if changed or push:
            self.store.bump_epoch()
            if self.on_change is not None:
                self.on_change()

    def _track_unreachable(self, spec: MappingSpec, plan: Plan, now: float) -> set[TargetKey]:
        """Note since when each target is unreachable; return the keys unreachable now."""
        if not spec.enabled or spec.source_node in self._down:
            return set()  # nothing to send: its targets are not at fault
        failed = self._failed.get(spec.mapping_id, {})
        bad = {
            t.node_id
            for t in spec.targets
            if t.node_id not in failed
            and (t.node_id in self._down or t.node_id in plan.unreachable)
        }
        keys = {(spec.mapping_id, t) for t in bad}
        for key in keys:
            self._unreachable_since.setdefault(key, now)
        return keys

    def _announce(
        self, spec: MappingSpec, before: tuple[RouteHop, ...], cached: _Cached, reason: str
    ) -> None:
        def label(h: RouteHop) -> str:
            return f"{self._name(h.parent)}>{self._name(h.child)}"

        added = sorted(label(h) for h in set(cached.routes) - set(before))
        removed = sorted(label(h) for h in set(before) - set(cached.routes))
        logger.info(
            "mapping %s re-planned (%s): route epoch %s, added %s, removed %s, unreachable %s",
            spec.name,
            reason,
            cached.route_epoch,
            added,
            removed,
            [self._name(n) for n in cached.plan.unreachable],
        )
        self.events.publish(
            EventType.ROUTE_CHANGED,
            mapping_id=spec.mapping_id,
            mapping=spec.name,
            route_epoch=cached.route_epoch,
            reason=reason,
            added=added,
            removed=removed,
            unreachable=[self._name(n) for n in cached.plan.unreachable],
        )

    def _source_of(self, mapping_id: int) -> str:
        cached = self._plans.get(mapping_id)
        return str(cached.key[0]) if cached is not None else ""

    # --- Views ---

    def view(self, mapping_id: int) -> RouteView:
        """The current routes of one mapping and why (failures, recoveries).

        Raises:
            NotFound: no such mapping.
        """
        spec = self.store.get_mapping(mapping_id).to_spec()
        with self._lock:
            self._ensure_loaded()
            cached = self._plan(spec)
            return RouteView(
                mapping_id=mapping_id,
                settings=self._settings.get(mapping_id) or RoutingSettings(mapping_id=mapping_id),
                route_epoch=cached.route_epoch,
                source=spec.source_node,
                routes=cached.routes,
                unreachable=tuple(cached.plan.unreachable),
                unreachable_since={
                    t: s for (m, t), s in self._unreachable_since.items() if m == mapping_id
                },
                failed=tuple(self._failed.get(mapping_id, {}).values()),
                failed_hops=tuple(
                    (p, c, u, self._hop_errors.get((m, p, c), ""))
                    for (m, p, c), u in self._failed_hops.items()
                    if m == mapping_id
                ),
                recoveries=tuple(
                    j for j in self._recoveries.values() if j.mapping_id == mapping_id
                ),
            )

    # --- Lifetime ---

    async def serve(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Load the state, then tick every TICK_S until cancelled; a store outage is retried."""
        await anyio.to_thread.run_sync(self.load)
        task_status.started()
        while True:
            try:
                await anyio.to_thread.run_sync(self.tick)
            except StoreError as exc:
                logger.warning("router: store unavailable, will retry: %s", exc)
            await anyio.sleep(TICK_S)
