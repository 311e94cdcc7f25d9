"""A revoked server (POST /api/servers/{name}/revoke) is no hop of any route and no peer of any
agent: the router plans it as down for good (the store never marks it up again) and as a failed
target. Pinned after a review suspected Router.apply named it as a relay; it did not."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.component.master._routing_env import FLEET, MANUAL_ROUTE, Env, nid, routing_env

from relaysync.master.store import Store


@pytest.fixture
def env(store: Store, tmp_path: Path) -> Iterator[Env]:
    with routing_env(store, tmp_path) as e:
        yield e


@pytest.mark.parametrize("mode", ["auto", "manual"])
def test_a_revoked_relay_is_bypassed_and_named_to_no_agent(env: Env, mode: str) -> None:
    if mode == "manual":
        body = {"mode": "manual", "hops": MANUAL_ROUTE}
        r = env.client.put(f"/api/mappings/{env.mapping_id}/routing", json=body)
        assert r.status_code == 200, r.text
    relays = {h["parent"] for h in env.routes()["hops"]} - {"src"}
    assert relays, env.routes()
    victim = sorted(relays)[0]
    assert env.client.post(f"/api/servers/{victim}/revoke").status_code == 200

    hops = env.routes()["hops"]
    assert all(victim not in (h["parent"], h["child"]) for h in hops), hops
    # every other target is still placed, its children under another parent
    assert {h["child"] for h in hops} == {n for n in FLEET if n not in ("src", victim)}
    env.set_state(victim, "up")  # a late report of its link: refused, it stays out
    for name in FLEET:
        if name != victim:
            sent = env.router.apply(env.store.assignment_for(nid(name)), nid(name))
            assert victim not in {p.name for p in sent.peers}, name
            (spec,) = sent.mappings
            assert all(nid(victim) not in (h.parent, h.child) for h in spec.routes)
