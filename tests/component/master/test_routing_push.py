"""A re-plan is pushed (config epoch bumped, on_change called, ROUTE_CHANGED published) even when
another thread planned the new version first: GET routes (Router.view) or an assignment
(Router.routes_for) between the router's version bump and its refresh.

Store on SQLite and PostgreSQL; the router alone, no agents.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from relaysync.errors import StoreError
from relaysync.master.events import EventBus, EventType
from relaysync.master.router import Router
from relaysync.master.store import Store
from relaysync.protocol.messages import RouteHop
from relaysync.testing.cluster import wait_until

# name -> (region, group): a relay group beside the source's
FLEET = {
    "src": ("r1", "g1"),
    "a1": ("r1", "g1"),
    "a2": ("r1", "g1"),
    "b1": ("r1", "g2"),
    "b2": ("r1", "g2"),
}
RACE_ROUNDS = 40
RACE_BOUND_S = 60.0


def nid(name: str) -> str:
    return (name * 64)[:64]


@dataclass
class Env:
    store: Store
    router: Router
    events: EventBus
    mapping_id: int
    pushes: list[int]

    def routes(self) -> tuple[RouteHop, ...]:
        return self.router.view(self.mapping_id).routes

    def pushed_routes(self) -> tuple[RouteHop, ...]:
        """The routes an assignment to the source carries now."""
        spec = self.router.routes_for(self.store.get_mapping(self.mapping_id).to_spec())
        return spec.routes

    def parent_of(self, child: str) -> str:
        return next(h.parent for h in self.routes() if h.child == nid(child))

    def route_events(self) -> int:
        return sum(e.type == EventType.ROUTE_CHANGED for e in self.events.since(0))


@pytest.fixture
def env(store: Store) -> Iterator[Env]:
    for name, (region, group) in FLEET.items():
        store.upsert_server(
            node_id=nid(name), name=name, region=region, group=group, address=f"{name}:1"
        )
        store.set_server_state(nid(name), "up", time.time())
    mapping = store.create_mapping(
        name="www",
        source="src",
        source_path="/srv",
        targets=[(n, "/www") for n in FLEET if n != "src"],
    )
    events, pushes = EventBus(), []
    router = Router(store, events, on_change=lambda: pushes.append(1))
    router.load()
    router.refresh("start")
    yield Env(store, router, events, mapping.id, pushes)


def _view_before_refresh(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run GET routes (Router.view) at the exact point the version is raised and the lock
    released, before refresh: the new tree is planned and cached first by the view."""
    real = env.router.refresh

    def refresh(reason: str, *, push: bool = False) -> None:
        env.router.view(env.mapping_id)
        real(reason, push=push)

    monkeypatch.setattr(env.router, "refresh", refresh)


def _hop_failed(env: Env) -> None:
    parent = env.parent_of("b2")
    env.router.hop_failed(env.mapping_id, parent, nid("b2"), attempts=2, error="refused")


def _manual_route(env: Env) -> None:
    hops = [("src", "a1"), ("a1", "a2"), ("a2", "b1"), ("b1", "b2")]
    env.store.routing.set(env.mapping_id, mode="manual", hops=hops)
    env.router.settings_changed()


def _relay_down(env: Env) -> None:
    relay = next(h.parent for h in env.routes() if h.parent != nid("src"))
    env.store.set_server_state(relay, "down", time.time())
    env.router.node_down(relay)


@pytest.mark.parametrize("change", [_hop_failed, _manual_route, _relay_down])
def test_a_tree_planned_first_by_a_view_is_still_pushed(
    env: Env, monkeypatch: pytest.MonkeyPatch, change: Callable[[Env], None]
) -> None:
    before, epoch, pushes = env.routes(), env.store.epoch(), len(env.pushes)
    events = env.route_events()
    _view_before_refresh(env, monkeypatch)
    change(env)
    assert env.routes() != before
    assert env.store.epoch() > epoch and len(env.pushes) > pushes
    assert env.route_events() > events
    assert env.pushed_routes() == env.routes()


def test_a_tree_no_refresh_announced_is_pushed_by_the_next_tick(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store fails during hop_failed's refresh: the hop is avoided (version raised), GET
    routes plans the new tree, and the periodic tick must push it."""
    before, epoch, pushes = env.routes(), env.store.epoch(), len(env.pushes)
    real = env.store.list_mappings

    def outage() -> list:
        raise StoreError("store unavailable")

    monkeypatch.setattr(env.store, "list_mappings", outage)
    with pytest.raises(StoreError):
        _hop_failed(env)
    monkeypatch.setattr(env.store, "list_mappings", real)
    assert env.routes() != before and env.store.epoch() == epoch
    env.router.tick()
    assert env.store.epoch() > epoch and len(env.pushes) > pushes


def test_hop_failures_racing_a_polling_view_are_all_pushed(env: Env) -> None:
    """The real race: a thread polls GET routes (as the console and CLI do) while hops fail."""
    stop = threading.Event()
    polls = [0]

    def poll() -> None:
        while not stop.is_set():
            env.router.view(env.mapping_id)
            polls[0] += 1

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    missed, deadline = [], time.monotonic() + RACE_BOUND_S
    try:
        wait_until(lambda: polls[0] > 0, timeout_s=10, what="the poller to start")
        for i in range(RACE_ROUNDS):
            if time.monotonic() > deadline:
                break
            before, epoch = env.routes(), env.store.epoch()
            child = list(FLEET)[1 + i % 4]
            parent = env.parent_of(child)
            env.router.hop_failed(env.mapping_id, parent, nid(child), attempts=2, error="x")
            if env.routes() != before and env.store.epoch() == epoch:
                missed.append(i)
            env.router.node_up(nid(child))  # hops into it are tried again: the tree changes back
    finally:
        stop.set()
        poller.join(10)
    assert missed == []
