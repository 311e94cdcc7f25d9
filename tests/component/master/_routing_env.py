"""The routing component tests' fixture: an eight-server fleet, one mapping, a router with a fake
clock and the REST API over them (Env), on SQLite or PostgreSQL through the `store` fixture."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from fastapi.testclient import TestClient
from tests.component.master._app import ADMIN, ADMIN_HEADERS

from relaysync.auth.ca import CertificateAuthority
from relaysync.master.app import create_app
from relaysync.master.events import EventBus, EventType
from relaysync.master.router import Router
from relaysync.master.store import Store
from relaysync.protocol.messages import CommitRecord, CommitReport

T0 = 1_000_000.0

# name -> (region, group): the source's group, a second group in its region, another region
FLEET = {
    "src": ("r1", "g1"),
    "a1": ("r1", "g1"),
    "a2": ("r1", "g1"),
    "a3": ("r1", "g1"),
    "b1": ("r1", "g2"),
    "b2": ("r1", "g2"),
    "c1": ("r2", "g3"),
    "c2": ("r2", "g3"),
}

# a valid manual route over FLEET: each target reached once, through one relay per group
MANUAL_ROUTE = [
    ["src", "a1"],
    ["a1", "a2"],
    ["a1", "a3"],
    ["src", "b1"],
    ["b1", "b2"],
    ["src", "c1"],
    ["c1", "c2"],
]


def nid(name: str) -> str:
    return (name * 64)[:64]


@dataclass
class Clock:
    now: float = T0

    def __call__(self) -> float:
        return self.now


@dataclass
class Pushes:
    calls: int = 0

    def __call__(self) -> None:
        self.calls += 1


@dataclass
class Env:
    store: Store
    router: Router
    client: TestClient
    events: EventBus
    clock: Clock
    pushes: Pushes
    mapping_id: int
    seen: set[int] = field(default_factory=set)

    def event_types(self) -> list[EventType]:
        """The events since the last call."""
        new = [e for e in self.events.since(0) if e.id not in self.seen]
        self.seen |= {e.id for e in new}
        return [e.type for e in new]

    def routes(self) -> dict:
        resp = self.client.get(f"/api/mappings/{self.mapping_id}/routes")
        assert resp.status_code == 200, resp.text
        return resp.json()

    def parent_of(self, child: str) -> str | None:
        return next((h["parent"] for h in self.routes()["hops"] if h["child"] == child), None)

    def set_state(self, name: str, state: str) -> None:
        self.store.set_server_state(nid(name), state, self.clock.now)
        (self.router.node_up if state == "up" else self.router.node_down)(nid(name))

    def tick(self, seconds: float) -> None:
        self.clock.now += seconds
        self.router.tick()

    def targets_sent(self, node: str = "src") -> set[str]:
        assignment = self.router.apply(self.store.assignment_for(nid(node)), nid(node))
        (spec,) = assignment.mappings
        return {t.node_id for t in spec.targets}

    def report(
        self,
        target: str,
        watermark: int,
        route: tuple[str, ...] = (),
        failed_seq: int = 0,
        journal: str = "",
    ) -> None:
        records = tuple(
            CommitRecord(
                seq=s,
                op="file",
                path=f"f{s}",
                ok=s != failed_seq,
                error="EIO" if s == failed_seq else "",
            )
            for s in range(1, watermark + 2)
        )
        self.store.record_commit_reports(
            [
                CommitReport(
                    mapping_id=self.mapping_id,
                    source_node=nid("src"),
                    target_node=nid(target),
                    watermark=watermark,
                    records=records,
                    route=route,
                    journal_id=journal,
                )
            ]
        )


@contextmanager
def routing_env(store: Store, tmp_path: Path) -> Iterator[Env]:
    """FLEET registered and up, one mapping from src to all the others, a router on a fake clock
    behind the API (its CA under tmp_path/ca); the start-up events already seen."""
    for name, (region, group) in FLEET.items():
        store.upsert_server(
            node_id=nid(name), name=name, region=region, group=group, address=f"{name}:1"
        )
        store.set_server_state(nid(name), "up", T0)
    mapping = store.create_mapping(
        name="www",
        source="src",
        source_path="/srv",
        targets=[(n, "/www") for n in FLEET if n != "src"],
    )
    events, clock, pushes = EventBus(), Clock(), Pushes()
    router = Router(store, events, clock=clock, on_change=pushes)
    app = create_app(
        store=store,
        ca=CertificateAuthority.load_or_create(tmp_path / "ca"),
        events=events,
        admin_token=ADMIN,
        control_address="127.0.0.1:7000",
        on_change=lambda: None,
        router=router,
    )
    with TestClient(app, headers=ADMIN_HEADERS) as client:
        e = Env(store, router, client, events, clock, pushes, mapping.id)
        router.load()
        router.refresh("start")
        e.event_types()
        yield e
