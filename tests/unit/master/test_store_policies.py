"""Link policies: section defaults, section rows, pair overrides, in the agents' assignments."""

from __future__ import annotations

import pytest

from relaysync.errors import ConfigError, NotFound
from relaysync.master.store import Store
from relaysync.protocol.messages import LinkPolicy


def _populate(store: Store) -> Store:
    layout = {
        "src": ("eu", "fra"),
        "same-group": ("eu", "fra"),
        "same-region": ("eu", "ams"),
        "far": ("us", "nyc"),
    }
    for name, (region, group) in layout.items():
        store.upsert_server(
            node_id=name * 2, name=name, region=region, group=group, address=f"{name}:1"
        )
    store.create_mapping(
        name="m",
        source="src",
        source_path="/a",
        targets=[(t, f"/{t}") for t in ("same-group", "same-region", "far")],
    )
    return store


@pytest.fixture
def world(store: Store) -> Store:
    return _populate(store)


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
    world.policies.set_policy(
        scope="inter_region", transfer="delta", zstd_level=9, bandwidth_limit_mbit=50
    )
    assert world.epoch() > epoch
    assert _policies(world)["farfar"] == LinkPolicy(
        transfer="delta", zstd_level=9, bandwidth_limit_mbit=50
    )
    pair = world.policies.set_policy(scope="pair", source="src", target="far", transfer="whole")
    # the pair sets transfer only: the other fields come from the section row
    assert _policies(world)["farfar"] == LinkPolicy(
        transfer="whole", zstd_level=9, bandwidth_limit_mbit=50
    )
    world.policies.set_policy(
        scope="pair", source="src", target="far", transfer="auto", zstd_level=2
    )
    assert len(world.policies.list_policies()) == 2  # replaced, not added
    world.policies.delete_policy(pair.id)
    assert _policies(world)["farfar"].zstd_level == 9


@pytest.mark.parametrize(
    "bad",
    [
        {"scope": "planet"},
        {"scope": "pair"},
        {"scope": "same_group", "source": "src", "target": "far"},
        {"scope": "same_group", "zstd_level": 42},
        {"scope": "same_group", "transfer": "carrier-pigeon"},
        {"scope": "same_group", "bandwidth_limit_mbit": -1},
        {"scope": "same_group", "bandwidth_limit_mbit": float("nan")},
        {"scope": "same_group", "bandwidth_limit_mbit": float("inf")},
        {
            "scope": "same_group",
            "windows": [{"start": "08:00", "end": "20:00", "bandwidth_limit_mbit": float("nan")}],
        },
        {"scope": "same_group", "source": "src", "zstd_level": 7},
        {"scope": "inter_region", "target": "far"},
        {"scope": "pair", "source": "src"},
    ],
)
def test_bad_policies_refused(world: Store, bad: dict) -> None:
    with pytest.raises(ConfigError):
        world.policies.set_policy(**bad)
    assert world.policies.list_policies() == []


@pytest.mark.parametrize(
    "named", [{"source": "src"}, {"target": "far"}, {"source": "src", "target": "far"}]
)
def test_a_section_policy_naming_a_server_is_refused(world: Store, named: dict) -> None:
    """Stored, it would match no link (sections are looked up without servers) and never apply."""
    with pytest.raises(
        ConfigError, match="a section policy names no server; use scope 'pair' for one source"
    ):
        world.policies.set_policy(scope="same_group", zstd_level=7, **named)


def test_fields_combine_independently_pair_then_section_then_default(world: Store) -> None:
    """Each field left out of a row is inherited: a pair's from its section's row, a section's
    from its default; a row's own value beats what it would inherit."""
    world.policies.set_policy(scope="inter_region", bandwidth_limit_mbit=100)
    assert _policies(world)["farfar"] == LinkPolicy(
        zstd_level=3, bandwidth_limit_mbit=100
    )  # default zstd kept
    world.policies.set_policy(
        scope="inter_region", tls=False, zstd_level=9
    )  # replaced: bandwidth inherited again
    world.policies.set_policy(scope="pair", source="src", target="far", bandwidth_limit_mbit=50)
    assert _policies(world)["farfar"] == LinkPolicy(
        tls=False, zstd_level=9, bandwidth_limit_mbit=50
    )
    world.policies.set_policy(scope="pair", source="src", target="far", zstd_level=0, tls=True)
    assert _policies(world)["farfar"] == LinkPolicy(tls=True, zstd_level=0)
    world.policies.set_policy(scope="pair", source="src", target="same-region", transfer="delta")
    assert _policies(world)["same-regionsame-region"] == LinkPolicy(transfer="delta", zstd_level=1)


def test_listed_rows_show_what_is_set_and_what_is_effective(world: Store) -> None:
    section = world.policies.set_policy(scope="inter_region", tls=False, zstd_level=9)
    pair = world.policies.set_policy(
        scope="pair", source="src", target="far", bandwidth_limit_mbit=50
    )
    assert (pair.tls, pair.transfer, pair.zstd_level, pair.bandwidth_limit_mbit) == (
        None,
        None,
        None,
        50,
    )
    assert (pair.windows, pair.timezone) == (None, None)
    assert pair.effective == LinkPolicy(tls=False, zstd_level=9, bandwidth_limit_mbit=50)
    listed = {p.id: p for p in world.policies.list_policies()}
    assert listed[pair.id] == pair
    assert (listed[section.id].tls, listed[section.id].bandwidth_limit_mbit) == (False, None)
    assert listed[section.id].effective == LinkPolicy(tls=False, zstd_level=9)


def test_a_pair_inherits_tls_off_only_from_a_section_marked_trusted(world: Store) -> None:
    """A link is plain (and gets a link secret) only where the effective policy turns TLS off:
    a pair row that leaves tls out follows its section, one that sets it wins."""
    world.policies.set_policy(scope="pair", source="src", target="far", zstd_level=5)
    assert not _secrets(world, "srcsrc")["farfar"]  # nothing marked trusted: TLS, as by default
    world.policies.set_policy(scope="inter_region", tls=False)
    assert _policies(world)["farfar"] == LinkPolicy(tls=False, zstd_level=5)
    assert _secrets(world, "srcsrc")["farfar"]
    world.policies.set_policy(scope="pair", source="src", target="far", zstd_level=5, tls=True)
    assert _policies(world)["farfar"].tls and not _secrets(world, "srcsrc")["farfar"]


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
        hops = (
            RouteHop(parent="srcsrc", child="same-regionsame-region"),
            RouteHop(parent="same-regionsame-region", child="same-groupsame-group"),
            RouteHop(parent="srcsrc", child="farfar"),
        )
        return msgspec.structs.replace(spec, routes=hops)

    assert _policies(world)["same-groupsame-group"] == LinkPolicy(
        zstd_level=0
    )  # a star: src -> target
    (spec,) = world.assignment_for("srcsrc", route=route).mappings
    got = {t.node_id: t.policy for t in spec.targets}
    assert got["same-groupsame-group"] == LinkPolicy(
        zstd_level=1
    )  # the hop same-region -> same-group
    assert got["farfar"] == LinkPolicy(zstd_level=3)
    world.policies.set_policy(scope="pair", source="same-region", target="same-group", zstd_level=7)
    (spec,) = world.assignment_for("srcsrc", route=route).mappings
    assert {t.node_id: t.policy for t in spec.targets}["same-groupsame-group"] == LinkPolicy(
        zstd_level=7
    )


WORKDAYS = {"days": "mon-fri", "start": "08:00", "end": "20:00", "bandwidth_limit_mbit": 50}
NIGHTS = {"days": "", "start": "22:00", "end": "06:00", "bandwidth_limit_mbit": 0}


def test_windows_round_trip_to_the_assignment(world: Store) -> None:
    from relaysync.protocol.messages import BandwidthWindow

    info = world.policies.set_policy(
        scope="inter_region",
        bandwidth_limit_mbit=400,
        windows=[WORKDAYS, {k: v for k, v in NIGHTS.items() if k != "days"}],
        timezone="Europe/Paris",
    )
    assert info.windows == [WORKDAYS, NIGHTS] and info.timezone == "Europe/Paris"
    (listed,) = world.policies.list_policies()
    assert (listed.windows, listed.timezone) == ([WORKDAYS, NIGHTS], "Europe/Paris")
    assert _policies(world)[
        "farfar"
    ] == LinkPolicy(  # zstd 3: the inter-region default, not set here
        zstd_level=3,
        bandwidth_limit_mbit=400,
        timezone="Europe/Paris",
        windows=(BandwidthWindow(**WORKDAYS), BandwidthWindow(**NIGHTS)),
    )
    world.policies.set_policy(
        scope="inter_region", bandwidth_limit_mbit=400
    )  # replaced: windows gone
    assert _policies(world)["farfar"] == LinkPolicy(zstd_level=3, bandwidth_limit_mbit=400)


@pytest.mark.parametrize(
    ("windows", "timezone", "message"),
    [
        ([{**WORKDAYS, "start": "8h"}], "", "window 1: window time '8h' must be HH:MM"),
        ([WORKDAYS, {**WORKDAYS, "days": "weekdays"}], "", "window 2: window days 'weekdays'"),
        ([{**WORKDAYS, "strat": "08:00"}], "", "window 1: takes days .*, not strat"),
        ([{"days": "mon", "bandwidth_limit_mbit": 1}], "", "window 1: takes days"),
        ([{**WORKDAYS, "bandwidth_limit_mbit": "fast"}], "", "window 1: Expected `float`"),
        ([WORKDAYS] * 25, "", "at most 24"),
        ([WORKDAYS], "Europe/Atlantis", "timezone 'Europe/Atlantis'"),
    ],
)
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
        return msgspec.structs.replace(
            spec,
            routes=(
                RouteHop(parent=src, child=relay),
                RouteHop(parent=relay, child=leaf),
                RouteHop(parent=src, child=far),
            ),
        )

    at_source, at_relay, at_leaf = (_secrets(world, n, route) for n in (src, relay, leaf))
    assert not at_source[leaf] and at_source[relay] and at_source[far]  # the relay feeds the leaf
    assert at_relay[relay] and at_relay[leaf] and not at_relay[far]
    assert [n for n, s in at_leaf.items() if s] == [leaf]
    assert at_leaf[leaf] == at_relay[leaf]  # both ends of the hop agree
    assert (
        at_leaf[leaf] != star[leaf]
    )  # per hop: the source, its parent before, cannot pass as the relay


def test_a_database_from_before_inheritance_keeps_its_full_rows(empty_store_url: str) -> None:
    """Rows written when every field was stored (before 0011_policy_inherit) still set every
    field, so they override their section whole, as they did; new rows may leave fields out."""
    import sqlalchemy as sa
    from alembic import command
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    from relaysync.master.store.store import MIGRATIONS_DIR

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    before = [
        r.revision
        for r in reversed(list(ScriptDirectory.from_config(cfg).walk_revisions()))
        if r.revision != "0011_policy_inherit"
    ]  # oldest first
    rows = sa.table(
        "link_policies",
        *(
            sa.column(c)
            for c in (
                "scope",
                "source_node",
                "target_node",
                "tls",
                "transfer",
                "zstd_level",
                "bandwidth_limit_mbit",
                "updated_at",
                "note",
            )
        ),
        sa.column("windows", sa.JSON),
        sa.column("timezone"),
    )
    full = {"updated_at": 1.0, "note": "", "windows": [], "timezone": ""}
    engine = sa.create_engine(empty_store_url)
    try:
        with engine.begin() as conn:
            cfg.attributes["connection"] = conn
            for revision in before:
                command.upgrade(cfg, revision)
            conn.execute(
                sa.insert(rows),
                [
                    {
                        **full,
                        "scope": "inter_region",
                        "source_node": "",
                        "target_node": "",
                        "tls": False,
                        "transfer": "delta",
                        "zstd_level": 9,
                        "bandwidth_limit_mbit": 50.0,
                    },
                    # what PUT {"scope": "pair", ..., "transfer": "whole"} stored before
                    {
                        **full,
                        "scope": "pair",
                        "source_node": "srcsrc",
                        "target_node": "farfar",
                        "tls": True,
                        "transfer": "whole",
                        "zstd_level": 0,
                        "bandwidth_limit_mbit": 0.0,
                    },
                ],
            )
    finally:
        engine.dispose()
    store = Store(empty_store_url)
    try:
        store.migrate()
        world = _populate(store)
        assert _policies(world)["farfar"] == LinkPolicy(transfer="whole")
        assert all(
            p.tls is not None and p.zstd_level is not None for p in world.policies.list_policies()
        )
        world.policies.set_policy(
            scope="pair", source="src", target="same-region", bandwidth_limit_mbit=5
        )
        assert _policies(world)["same-regionsame-region"] == LinkPolicy(
            zstd_level=1, bandwidth_limit_mbit=5
        )
    finally:
        store.close()
