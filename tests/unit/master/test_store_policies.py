"""Link policies: section defaults, section rows, pair overrides, in the agents' assignments."""

from __future__ import annotations

import pytest

from relaysync.errors import ConfigError, NotFound
from relaysync.master.store import Store
from relaysync.protocol.messages import LinkPolicy


@pytest.fixture
def world(store: Store) -> Store:
    layout = {"src": ("eu", "fra"), "same-group": ("eu", "fra"), "same-region": ("eu", "ams"),
              "far": ("us", "nyc")}
    for name, (region, group) in layout.items():
        store.upsert_server(node_id=name * 2, name=name, region=region, group=group, address=f"{name}:1")
    store.create_mapping(name="m", source="src", source_path="/a",
                         targets=[(t, f"/{t}") for t in ("same-group", "same-region", "far")])
    return store


def _policies(store: Store) -> dict[str, LinkPolicy | None]:
    (spec,) = store.assignment_for("srcsrc").mappings
    return {t.node_id: t.policy for t in spec.targets}


def test_section_defaults_without_rows(world: Store) -> None:
    got = _policies(world)
    assert got["same-groupsame-group"] == LinkPolicy(zstd_level=0)
    assert got["same-regionsame-region"] == LinkPolicy(zstd_level=1)
    assert got["farfar"] == LinkPolicy(zstd_level=3)


def test_section_row_then_pair_override(world: Store) -> None:
    epoch = world.epoch()
    world.policies.set_policy(scope="inter_region", transfer="delta", zstd_level=9, bandwidth_limit_mbit=50)
    assert world.epoch() > epoch
    assert _policies(world)["farfar"] == LinkPolicy(transfer="delta", zstd_level=9, bandwidth_limit_mbit=50)
    pair = world.policies.set_policy(scope="pair", source="src", target="far", transfer="whole")
    assert _policies(world)["farfar"] == LinkPolicy(transfer="whole")
    world.policies.set_policy(scope="pair", source="src", target="far", transfer="auto", zstd_level=2)
    assert len(world.policies.list_policies()) == 2  # replaced, not added
    world.policies.delete_policy(pair.id)
    assert _policies(world)["farfar"].zstd_level == 9


@pytest.mark.parametrize("bad", [
    {"scope": "planet"},
    {"scope": "pair"},
    {"scope": "same_group", "source": "src", "target": "far"},
    {"scope": "same_group", "zstd_level": 42},
    {"scope": "same_group", "transfer": "carrier-pigeon"},
    {"scope": "same_group", "bandwidth_limit_mbit": -1},
])
def test_bad_policies_refused(world: Store, bad: dict) -> None:
    with pytest.raises(ConfigError):
        world.policies.set_policy(**bad)


def test_unknown_server_or_policy(world: Store) -> None:
    with pytest.raises(NotFound):
        world.policies.set_policy(scope="pair", source="src", target="nobody")
    with pytest.raises(NotFound):
        world.policies.delete_policy(999)


def test_a_relayed_target_gets_the_policy_of_its_hop(world: Store) -> None:
    """Fed by a relay in another group of its region, a target's link is a same-region link,
    though the source is in its own group."""
    import msgspec

    from relaysync.protocol.messages import MappingSpec, RouteHop

    def route(spec: MappingSpec) -> MappingSpec:
        hops = (RouteHop(parent="srcsrc", child="same-regionsame-region"),
                RouteHop(parent="same-regionsame-region", child="same-groupsame-group"),
                RouteHop(parent="srcsrc", child="farfar"))
        return msgspec.structs.replace(spec, routes=hops)

    assert _policies(world)["same-groupsame-group"] == LinkPolicy(zstd_level=0)  # a star: src -> target
    (spec,) = world.assignment_for("srcsrc", route=route).mappings
    got = {t.node_id: t.policy for t in spec.targets}
    assert got["same-groupsame-group"] == LinkPolicy(zstd_level=1)  # the hop same-region -> same-group
    assert got["farfar"] == LinkPolicy(zstd_level=3)
    world.policies.set_policy(scope="pair", source="same-region", target="same-group", zstd_level=7)
    (spec,) = world.assignment_for("srcsrc", route=route).mappings
    assert {t.node_id: t.policy for t in spec.targets}["same-groupsame-group"] == LinkPolicy(zstd_level=7)


WORKDAYS = {"days": "mon-fri", "start": "08:00", "end": "20:00", "bandwidth_limit_mbit": 50}
NIGHTS = {"days": "", "start": "22:00", "end": "06:00", "bandwidth_limit_mbit": 0}


def test_windows_round_trip_to_the_assignment(world: Store) -> None:
    from relaysync.protocol.messages import BandwidthWindow

    info = world.policies.set_policy(scope="inter_region", bandwidth_limit_mbit=400,
                                     windows=[WORKDAYS, {k: v for k, v in NIGHTS.items() if k != "days"}],
                                     timezone="Europe/Paris")
    assert info.windows == [WORKDAYS, NIGHTS] and info.timezone == "Europe/Paris"
    (listed,) = world.policies.list_policies()
    assert (listed.windows, listed.timezone) == ([WORKDAYS, NIGHTS], "Europe/Paris")
    assert _policies(world)["farfar"] == LinkPolicy(
        bandwidth_limit_mbit=400, timezone="Europe/Paris",
        windows=(BandwidthWindow(**WORKDAYS), BandwidthWindow(**NIGHTS)))
    world.policies.set_policy(scope="inter_region", bandwidth_limit_mbit=400)  # replaced: windows gone
    assert _policies(world)["farfar"] == LinkPolicy(bandwidth_limit_mbit=400)


@pytest.mark.parametrize(("windows", "timezone", "message"), [
    ([{**WORKDAYS, "start": "8h"}], "", "window 1: window time '8h' must be HH:MM"),
    ([WORKDAYS, {**WORKDAYS, "days": "weekdays"}], "", "window 2: window days 'weekdays'"),
    ([{**WORKDAYS, "strat": "08:00"}], "", "window 1: takes days .*, not strat"),
    ([{"days": "mon", "bandwidth_limit_mbit": 1}], "", "window 1: takes days"),
    ([{**WORKDAYS, "bandwidth_limit_mbit": "fast"}], "", "window 1: Expected `float`"),
    ([WORKDAYS] * 25, "", "at most 24"),
    ([WORKDAYS], "Europe/Atlantis", "timezone 'Europe/Atlantis'"),
])
def test_bad_windows_refused(world: Store, windows: list, timezone: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        world.policies.set_policy(scope="same_group", windows=windows, timezone=timezone)
    assert world.policies.list_policies() == []


def _secrets(store: Store, node_id: str, route=None) -> dict[str, bytes]:  # type: ignore[no-untyped-def]
    (spec,) = store.assignment_for(node_id, route=route).mappings
    return {t.node_id: t.link_secret for t in spec.targets}


def test_plain_link_secrets_reach_only_the_two_ends_of_their_hop(world: Store) -> None:
    """With TLS off on every link, a node holds its own target entry's secret and those of the
    targets it feeds: a sibling target that held another's could pose as that one's parent."""
    import msgspec

    from relaysync.protocol.messages import MappingSpec, RouteHop

    for scope in ("same_group", "same_region", "inter_region"):
        world.policies.set_policy(scope=scope, tls=False)
    src, relay, leaf, far = "srcsrc", "same-regionsame-region", "same-groupsame-group", "farfar"
    star = _secrets(world, src)
    assert all(star.values())  # the source feeds every target of a star
    assert [n for n, s in _secrets(world, far).items() if s] == [far]
    assert [n for n, s in _secrets(world, leaf).items() if s] == [leaf]

    def route(spec: MappingSpec) -> MappingSpec:
        return msgspec.structs.replace(spec, routes=(RouteHop(parent=src, child=relay),
                                                     RouteHop(parent=relay, child=leaf),
                                                     RouteHop(parent=src, child=far)))

    at_source, at_relay, at_leaf = (_secrets(world, n, route) for n in (src, relay, leaf))
    assert not at_source[leaf] and at_source[relay] and at_source[far]  # the relay feeds the leaf
    assert at_relay[relay] and at_relay[leaf] and not at_relay[far]
    assert [n for n, s in at_leaf.items() if s] == [leaf]
    assert at_leaf[leaf] == at_relay[leaf]  # both ends of the hop agree
    assert at_leaf[leaf] != star[leaf]  # per hop: the source, its parent before, cannot pass as the relay
