"""Relay routes on the master: topology edits, routing settings, the router's failure state machine
(with a fake clock), recovery policies, routes in the job log, and per-change target states.

Store on SQLite and PostgreSQL; the REST API through FastAPI's TestClient; no agents.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.component.master._routing_env import FLEET, MANUAL_ROUTE, Env, nid, routing_env

from relaysync.constants import RECEIVE_TIMEOUT_S
from relaysync.master._router_clock import HOP_FAILED_TTL_S, LINK_GRACE_S
from relaysync.master.events import EventBus, EventType
from relaysync.master.router import Router
from relaysync.master.store import Store
from relaysync.protocol.messages import Assignment


@pytest.fixture
def env(store: Store, tmp_path: Path) -> Iterator[Env]:
    with routing_env(store, tmp_path) as e:
        yield e


# --- Topology ---


def test_topology_edit_wins_over_registration(env: Env) -> None:
    resp = env.client.patch(
        "/api/servers/a1", json={"region": "r2", "group": "g9", "capacity_weight": 3}
    )
    assert resp.status_code == 200, resp.text
    assert (
        resp.json()["region"],
        resp.json()["capacity_weight"],
        resp.json()["topology_locked"],
    ) == ("r2", 3, True)
    topo = env.client.get("/api/topology").json()
    r2 = next(r for r in topo["regions"] if r["name"] == "r2")
    g9 = next(g for g in r2["groups"] if g["name"] == "g9")
    assert [(s["name"], s["capacity_weight"], s["state"]) for s in g9["servers"]] == [
        ("a1", 3, "up")
    ]
    # the agent registers again with its own config: the operator's placement stays
    env.store.upsert_server(node_id=nid("a1"), name="a1", region="r1", group="g1", address="a1:2")
    assert (env.store.get_server("a1").region, env.store.get_server("a1").address) == ("r2", "a1:2")
    assert env.client.patch("/api/servers/a1", json={"locked": False}).status_code == 200
    env.store.upsert_server(node_id=nid("a1"), name="a1", region="r1", group="g1", address="a1:2")
    assert env.store.get_server("a1").group == "g1"


def test_topology_edit_errors(env: Env) -> None:
    assert env.client.patch("/api/servers/a1", json={"capacity_weight": 0}).status_code == 422
    resp = env.client.patch("/api/servers/a1", json={"region": "bad name"})
    assert resp.status_code == 422 and "region name" in resp.json()["detail"]
    assert env.client.patch("/api/servers/ghost", json={"region": "r"}).status_code == 404
    assert env.store.get_server("a1").region == "r1"


# --- Routing settings ---


@pytest.mark.parametrize(
    ("hops", "words"),
    [
        ([["src", "a1"], ["a1", "a2"], ["a2", "a1"]], "a1"),  # a loop / reached twice
        ([["src", "ghost"]], "ghost"),  # unknown server
        ([*MANUAL_ROUTE, ["b1", "a1"]], "a1"),  # a target reached twice
    ],
)
def test_manual_route_refused_with_the_planners_message(env: Env, hops: list, words: str) -> None:
    before = env.client.get(f"/api/mappings/{env.mapping_id}/routing").json()
    resp = env.client.put(
        f"/api/mappings/{env.mapping_id}/routing", json={"mode": "manual", "hops": hops}
    )
    assert resp.status_code == 400, resp.text
    assert "Invalid manual route" in resp.json()["detail"] and words in resp.json()["detail"]
    assert env.client.get(f"/api/mappings/{env.mapping_id}/routing").json() == before


def test_manual_route_and_settings(env: Env) -> None:
    route = MANUAL_ROUTE
    resp = env.client.put(
        f"/api/mappings/{env.mapping_id}/routing",
        json={"mode": "manual", "hops": route, "fanout": 2, "fail_after_s": 30},
    )
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert (body["mode"], body["fanout"], body["fail_after_s"]) == ("manual", 2, 30)
    assert [list(h) for h in body["hops"]] == route
    hops = env.routes()["hops"]
    assert {(h["parent"], h["child"], h["level"]) for h in hops} == {
        (p, c, "manual") for p, c in route
    }
    assert env.pushes.calls >= 1 and EventType.ROUTE_CHANGED in env.event_types()
    # back to auto: the manual hops go
    body = env.client.put(f"/api/mappings/{env.mapping_id}/routing", json={"mode": "auto"}).json()
    assert (body["mode"], body["hops"], body["fanout"]) == ("auto", [], 2)


@pytest.mark.parametrize(
    ("body", "status", "words"),
    [
        ({"recovery_policy": "reserved"}, 422, "schedule"),
        ({"recovery_policy": "reserved", "recovery_schedule": "soon"}, 422, "schedule"),
        ({"recovery_policy": "at_once", "recovery_schedule": "every:5"}, 422, "schedule"),
        ({"recovery_policy": "sometimes"}, 422, ""),
        ({"fanout": 0}, 422, ""),
        ({"fail_after_s": 0}, 422, ""),
        ({"targets": {"src": {"policy": "manual"}}}, 422, "not a target"),
        ({"mode": "manual"}, 422, "needs hops"),
    ],
)
def test_routing_settings_errors(env: Env, body: dict, status: int, words: str) -> None:
    resp = env.client.put(f"/api/mappings/{env.mapping_id}/routing", json=body)
    assert resp.status_code == status, resp.text
    assert words in str(resp.json()["detail"])


def test_per_target_policy_override(env: Env) -> None:
    resp = env.client.put(
        f"/api/mappings/{env.mapping_id}/routing",
        json={
            "recovery_policy": "manual",
            "targets": {"a1": {"policy": "reserved", "schedule": "every:60"}},
        },
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["recovery_policy"] == "manual"
    assert resp.json()["targets"] == {"a1": {"policy": "reserved", "schedule": "every:60"}}
    body = env.client.put(
        f"/api/mappings/{env.mapping_id}/routing", json={"targets": {"a1": None}}
    ).json()
    assert body["targets"] == {}


# --- The router ---


def test_auto_plan_crosses_each_region_once(env: Env) -> None:
    routes = env.routes()
    assert routes["unreachable"] == [] and len(routes["hops"]) == 7
    from_source = [h["child"] for h in routes["hops"] if h["parent"] == "src"]
    assert sum(FLEET[c][0] == "r2" for c in from_source) == 1
    spec = env.router.routes_for(env.store.get_mapping(env.mapping_id).to_spec())
    assert spec.route_epoch > 0 and len(spec.routes) == 7


def test_hop_failed_twice_is_avoided_until_the_ttl(env: Env) -> None:
    child = next(h for h in env.routes()["hops"] if h["parent"] != "src")
    parent, name = child["parent"], child["child"]
    epoch, pushes = env.store.epoch(), env.pushes.calls
    env.router.hop_failed(env.mapping_id, nid(parent), nid(name), attempts=1, error="refused")
    assert env.parent_of(name) == parent  # one failure: agents retry
    env.router.hop_failed(env.mapping_id, nid(parent), nid(name), attempts=2, error="refused")
    assert env.parent_of(name) not in (parent, None)
    assert env.store.epoch() > epoch and env.pushes.calls > pushes
    kinds = env.event_types()
    assert EventType.HOP_FAILED in kinds and EventType.ROUTE_CHANGED in kinds
    assert [(h["parent"], h["child"]) for h in env.routes()["failed_hops"]] == [(parent, name)]
    assert env.routes()["failed_hops"][0]["error"] == "refused"  # why, not only that it failed
    env.tick(HOP_FAILED_TTL_S - 1)
    assert env.parent_of(name) != parent
    env.tick(2)
    assert env.parent_of(name) == parent and env.routes()["failed_hops"] == []


def test_node_down_is_routed_around_then_failed_and_dropped(env: Env) -> None:
    env.client.put(f"/api/mappings/{env.mapping_id}/routing", json={"fail_after_s": 10})
    relay = next(h["parent"] for h in env.routes()["hops"] if h["parent"] != "src")
    env.set_state(relay, "down")
    routes = env.routes()
    assert relay not in {h["parent"] for h in routes["hops"]} | {h["child"] for h in routes["hops"]}
    assert (
        routes["unreachable"] == [relay] and len(routes["hops"]) == 6
    )  # its children got a new parent
    env.tick(9)
    assert env.routes()["failed"] == [] and nid(relay) in env.targets_sent()
    env.tick(2)
    [failed] = env.routes()["failed"]
    assert (failed["target"], failed["policy"]) == (relay, "at_once")
    assert EventType.TARGET_FAILED in env.event_types()
    assert nid(relay) not in env.targets_sent()  # the source stops keeping its journal for it
    own: Assignment = env.router.apply(env.store.assignment_for(nid(relay)), nid(relay))
    assert own.mappings == ()
    assert own.parked == (env.mapping_id,)  # its agent keeps the mapping's state for recovery
    # durable: a restarted master leaves it out too
    fresh = Router(env.store, EventBus(), clock=env.clock)
    spec = fresh.routes_for(env.store.get_mapping(env.mapping_id).to_spec())
    assert nid(relay) not in {t.node_id for t in spec.targets}


def test_targets_of_a_down_source_never_fail(env: Env) -> None:
    env.client.put(f"/api/mappings/{env.mapping_id}/routing", json={"fail_after_s": 5})
    env.set_state("src", "down")
    env.tick(60)
    assert env.routes()["failed"] == []


def _fail(env: Env, name: str) -> None:
    env.set_state(name, "down")
    env.tick(11)
    assert [f["target"] for f in env.routes()["failed"]] == [name]
    env.event_types()


def test_recovery_at_once(env: Env) -> None:
    env.client.put(f"/api/mappings/{env.mapping_id}/routing", json={"fail_after_s": 10})
    env.report("a2", 5)
    _fail(env, "a1")
    env.tick(30)
    assert env.routes()["failed"]  # still down: stays failed
    env.set_state("a1", "up")
    env.tick(1)
    routes = env.routes()
    assert routes["failed"] == [] and nid("a1") in env.targets_sent()
    [job] = routes["recoveries"]
    assert (job["target"], job["trigger"], job["goal_seq"], job["outcome"]) == (
        "a1",
        "at_once",
        5,
        "running",
    )
    assert "a1" in {h["child"] for h in routes["hops"]}
    assert EventType.RECOVERY_STARTED in env.event_types()
    env.tick(1)
    assert env.routes()["recoveries"]  # not caught up yet
    env.report("a1", 5)
    env.tick(1)
    assert env.routes()["recoveries"] == []
    [done] = env.client.get(f"/api/mappings/{env.mapping_id}/recoveries").json()
    assert (done["outcome"], done["finished_at"] is not None) == ("done", True)
    assert EventType.TARGET_RECOVERED in env.event_types()


def test_recovery_finishes_in_a_new_source_journal(env: Env) -> None:
    """The source's journal is recreated while a1 recovers towards a2's watermark in the old
    one (5): the new journal's head (3) is its goal now, and a1 at 3 in it has recovered.
    Before, the job kept goal 5 of the old journal and ran until the new journal passed it."""
    old, new = "1" * 32, "2" * 32
    env.client.put(f"/api/mappings/{env.mapping_id}/routing", json={"fail_after_s": 10})
    env.report("a2", 5, journal=old)
    env.store.record_source_heads({nid("src"): [(env.mapping_id, 5, old)]})
    _fail(env, "a1")
    env.set_state("a1", "up")
    env.tick(1)
    [job] = env.routes()["recoveries"]
    assert (job["target"], job["goal_seq"]) == ("a1", 5)
    env.store.record_source_heads({nid("src"): [(env.mapping_id, 3, new)]})
    env.report("a1", 3, journal=new)
    env.tick(1)
    assert env.routes()["recoveries"] == []
    [done] = env.client.get(f"/api/mappings/{env.mapping_id}/recoveries").json()
    assert (done["outcome"], done["goal_seq"], done["detail"]) == ("done", 3, "watermark 3")
    assert EventType.TARGET_RECOVERED in env.event_types()


def test_recovery_reserved_waits_for_the_schedule(env: Env) -> None:
    env.client.put(
        f"/api/mappings/{env.mapping_id}/routing",
        json={
            "fail_after_s": 10,
            "targets": {"b1": {"policy": "reserved", "schedule": "every:100"}},
        },
    )
    env.report("a2", 4)
    _fail(env, "b1")
    env.set_state("b1", "up")
    env.tick(1)
    [failed] = env.routes()["failed"]
    assert failed["policy"] == "reserved" and failed["next_recovery_at"] == pytest.approx(
        env.clock.now + 100
    )
    env.tick(98)
    assert env.routes()["failed"] and nid("b1") not in env.targets_sent()
    env.tick(2)
    routes = env.routes()
    assert routes["failed"] == [] and [j["trigger"] for j in routes["recoveries"]] == ["reserved"]


def test_recovery_manual_only_on_request(env: Env) -> None:
    env.client.put(
        f"/api/mappings/{env.mapping_id}/routing",
        json={"fail_after_s": 10, "recovery_policy": "manual"},
    )
    _fail(env, "c1")
    env.set_state("c1", "up")
    env.tick(1)
    env.tick(HOP_FAILED_TTL_S * 5)
    assert [f["target"] for f in env.routes()["failed"]] == ["c1"]
    resp = env.client.post(f"/api/mappings/{env.mapping_id}/recover", json={"target": "c1"})
    assert resp.status_code == 200, resp.text
    assert (resp.json()["target"], resp.json()["trigger"]) == ("c1", "manual")
    assert env.routes()["failed"] == [] and nid("c1") in env.targets_sent()
    again = env.client.post(f"/api/mappings/{env.mapping_id}/recover", json={"target": "c1"})
    assert again.status_code == 422 and "not a failed target" in again.json()["detail"]


def test_manual_route_bypasses_a_failed_relay(env: Env) -> None:
    env.client.put(
        f"/api/mappings/{env.mapping_id}/routing",
        json={"mode": "manual", "hops": MANUAL_ROUTE, "fail_after_s": 10},
    )
    _fail(env, "a1")
    hops = {h["child"]: h for h in env.routes()["hops"]}
    assert (
        "a1" not in hops
        and hops["a2"]["parent"] != "a1"
        and hops["a2"]["level"].startswith("bypass")
    )


# --- Job log ---


def test_route_is_recorded_in_the_job_log(env: Env) -> None:
    env.report("a2", 3, route=("src", "a1"))
    env.report("a1", 3, route=("src",))
    env.report("b1", 2)  # an agent that does not say
    advances = env.client.get("/api/advances", params={"mapping": "www", "target": "a2"}).json()
    assert [(a["route"], a["to_seq"]) for a in advances] == [("src>a1>a2", 3)]
    everything = {a["target_node"]: a["route"] for a in env.client.get("/api/advances").json()}
    assert everything == {nid("a2"): "src>a1>a2", nid("a1"): "src>a1", nid("b1"): ""}


def test_change_state_per_target(env: Env) -> None:
    env.client.put(f"/api/mappings/{env.mapping_id}/routing", json={"fail_after_s": 10})
    env.report("a1", 5)
    env.report("a2", 2)
    env.report("b1", 5, failed_seq=3)
    _fail(env, "c1")
    resp = env.client.get(f"/api/mappings/{env.mapping_id}/changes/3")
    assert resp.status_code == 200, resp.text
    states = {t["target"]: t["state"] for t in resp.json()["targets"]}
    assert states == {
        "a1": "committed",
        "a2": "pending",
        "a3": "pending",
        "b1": "failed",
        "b2": "pending",
        "c1": "failed",
        "c2": "pending",
    }
    errors = {t["target"]: t["error"] for t in resp.json()["targets"]}
    assert errors["b1"] == "EIO" and "down" in errors["c1"]
    assert env.client.get(f"/api/mappings/{env.mapping_id}/changes/0").status_code == 422
    assert env.client.get("/api/mappings/nope/changes/1").status_code == 404


def test_hops_into_a_restarted_server_are_tried_again(env: Env) -> None:
    """A child killed mid-stream makes its parent report the hop; once it is back it is fed by
    the same parent again (its nearest neighbour), not bypassed for the hop's TTL."""
    child = next(h for h in env.routes()["hops"] if h["parent"] != "src")
    parent, name = child["parent"], child["child"]
    env.set_state(name, "down")
    env.router.hop_failed(env.mapping_id, nid(parent), nid(name), attempts=2, error="EndOfStream")
    assert env.routes()["failed_hops"] == []  # the child is down: the hop is not to blame
    env.set_state(name, "up")
    assert env.parent_of(name) == parent
    env.router.hop_failed(env.mapping_id, nid(parent), nid(name), attempts=2, error="refused")
    assert env.parent_of(name) != parent  # up, and still refusing: bypassed
    env.set_state(name, "down")
    env.set_state(name, "up")  # restarted: the hop gets a fresh chance
    assert env.parent_of(name) == parent


def test_a_failure_at_an_address_the_child_has_left_is_not_held_against_the_hop(env: Env) -> None:
    """A relay restarted on a new port is up at once, while its parent still dials the old port
    until its next assignment: those refusals were held against the hop for HOP_FAILED_TTL_S,
    the child fed from elsewhere (or not at all) for a minute. They are ignored now; a failure
    at the child's current address still counts."""
    child = next(h for h in env.routes()["hops"] if h["parent"] != "src")
    parent, name = child["parent"], child["child"]
    server = env.store.get_server(name)
    env.set_state(name, "down")
    env.store.upsert_server(
        node_id=nid(name), name=name, region=server.region, group=server.group, address=f"{name}:2"
    )
    env.set_state(name, "up")
    old, new = f"{name}:1", f"{name}:2"
    for attempts in (2, 3):
        env.router.hop_failed(
            env.mapping_id, nid(parent), nid(name), attempts=attempts, error="refused", address=old
        )
    assert env.parent_of(name) == parent and env.routes()["failed_hops"] == []
    env.router.hop_failed(
        env.mapping_id, nid(parent), nid(name), attempts=4, error="refused", address=new
    )
    assert env.parent_of(name) != parent
    assert [(h["parent"], h["child"]) for h in env.routes()["failed_hops"]] == [(parent, name)]


def test_after_a_restart_only_servers_not_seen_since_are_taken_down(env: Env) -> None:
    """A server stored up by the master before, whose agent is not back after the grace, goes
    down; one that registered with this master while its link was not listed yet stays up, as
    long as it is heard from; one silent for longer than a live link can be goes down too."""
    env.clock.now += 100
    linked: set[str] = {nid("src")}
    router = Router(env.store, EventBus(), clock=env.clock, links_up=lambda: linked)
    router.load()
    for name in ("a1", "b1"):  # registering right now: their links are not listed yet
        env.store.set_server_state(nid(name), "up", env.clock.now + 1)
    router.topology_changed("a1, b1 up")
    env.clock.now += LINK_GRACE_S + 1
    router.tick()
    states = {s.name: s.state for s in env.store.list_servers()}
    assert {n for n, s in states.items() if s == "up"} == {"src", "a1", "b1"}
    assert nid("a1") in {r.child for r in router.view(env.mapping_id).routes}  # still planned
    env.clock.now += RECEIVE_TIMEOUT_S
    env.store.set_server_state(nid("a1"), "up", env.clock.now)  # its heartbeat; b1 fell silent
    router.tick()
    states = {s.name: s.state for s in env.store.list_servers()}
    assert {n for n, s in states.items() if s == "up"} == {"src", "a1"}


def test_two_servers_coming_up_at_once_are_both_planned(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The control links of a1 and a2 come up in two threads: the snapshot of the servers one
    thread read before the other's "up" must not be set after it (a2 stayed out of every plan)."""
    import threading

    for name in ("a1", "a2"):
        env.set_state(name, "down")
    assert env.parent_of("a1") is None and env.parent_of("a2") is None  # planned around
    real = env.store.list_servers
    inside, go = threading.Event(), threading.Event()

    def slow_first_read() -> list:
        servers = real()  # a1 up, a2 still down
        if not inside.is_set():
            inside.set()
            go.wait(5)
        return servers

    monkeypatch.setattr(env.store, "list_servers", slow_first_read)
    env.store.set_server_state(nid("a1"), "up", env.clock.now)
    first = threading.Thread(target=env.router.node_up, args=(nid("a1"),))
    first.start()
    assert inside.wait(5)
    env.store.set_server_state(nid("a2"), "up", env.clock.now)
    second = threading.Thread(target=env.router.node_up, args=(nid("a2"),))
    second.start()
    second.join(0.5)  # done before the first thread's stale read is set, unless it must wait for it
    go.set()
    first.join(5)
    second.join(5)
    assert env.parent_of("a1") is not None and env.parent_of("a2") is not None
