"""Store: mappings, their validation, the epoch, and the assignment each node gets."""

from __future__ import annotations

import pytest

from relaysync.errors import ConfigError, NotFound
from relaysync.master.store import Store
from relaysync.protocol.messages import PeerInfo

A, B, C, D = "a" * 64, "b" * 64, "c" * 64, "d" * 64


@pytest.fixture
def fleet(store: Store) -> Store:
    for node, name in ((A, "src"), (B, "t1"), (C, "t2"), (D, "other")):
        store.upsert_server(node_id=node, name=name, region="eu", group="g", address=f"{name}:7001")
    return store


def test_create_by_name_or_node_id(fleet: Store) -> None:
    m = fleet.create_mapping(
        name="www",
        source="src",
        source_path="/srv/www/",
        targets=[("t1", "/var/www"), (C, "/data/www")],
        include=[r"\.html$"],
    )
    assert (m.source_node, m.source_name, m.source_path) == (A, "src", "/srv/www")
    assert [(t.node_id, t.name, t.path) for t in m.targets] == [
        (B, "t1", "/var/www"),
        (C, "t2", "/data/www"),
    ]
    assert m.include == (r"\.html$",) and m.durability == "safe" and m.enabled
    assert fleet.get_mapping(m.id) == fleet.get_mapping("www") == fleet.get_mapping(str(m.id)) == m
    assert fleet.list_mappings() == [m]


@pytest.mark.parametrize(
    ("kwargs", "error", "text"),
    [
        ({"source_path": "srv"}, ConfigError, "absolute"),
        ({"source_path": "/srv/../etc"}, ConfigError, r"\.\."),
        ({"targets": [("t1", "relative")]}, ConfigError, "target path on 't1'"),
        ({"targets": [("src", "/srv")]}, ConfigError, "source folder itself"),
        ({"targets": [("t1", "/a"), ("t1", "/b")]}, ConfigError, "twice"),
        ({"targets": []}, ConfigError, "at least one target"),
        (
            {"include": ["("]},
            ConfigError,
            "include pattern '\\(' is not a valid regular expression",
        ),
        ({"exclude": ["[z-a]"]}, ConfigError, "exclude pattern"),
        ({"durability": "yolo"}, ConfigError, "durability"),
        ({"name": ""}, ConfigError, "mapping name"),
        ({"name": "42"}, ConfigError, "all digits"),
        ({"source": "ghost"}, NotFound, "Server 'ghost' not found"),
        ({"targets": [("ghost", "/x")]}, NotFound, "Server 'ghost' not found"),
    ],
)
def test_create_is_validated(fleet: Store, kwargs: dict, error: type[Exception], text: str) -> None:
    args = {
        "name": "m",
        "source": "src",
        "source_path": "/srv",
        "targets": [("t1", "/dst")],
        **kwargs,
    }
    with pytest.raises(error, match=text):
        fleet.create_mapping(**args)
    assert fleet.list_mappings() == []
    assert fleet.epoch() == 0


def test_same_server_other_folder_is_allowed(fleet: Store) -> None:
    m = fleet.create_mapping(name="local", source="src", source_path="/a", targets=[("src", "/b")])
    assert m.targets[0].node_id == A


def test_name_is_unique(fleet: Store) -> None:
    fleet.create_mapping(name="m", source="src", source_path="/a", targets=[("t1", "/b")])
    with pytest.raises(ConfigError, match="already used"):
        fleet.create_mapping(name="m", source="src", source_path="/c", targets=[("t1", "/d")])


def test_epoch_increments_with_every_mapping_change(fleet: Store) -> None:
    assert fleet.epoch() == 0
    m = fleet.create_mapping(name="m", source="src", source_path="/a", targets=[("t1", "/b")])
    assert fleet.epoch() == 1
    fleet.update_mapping(m.id, targets=[("t1", "/b"), ("t2", "/c")])
    assert fleet.epoch() == 2
    with pytest.raises(ConfigError):
        fleet.update_mapping(m.id, include=["("])
    assert fleet.epoch() == 2
    fleet.delete_mapping("m")
    assert fleet.epoch() == 3


def test_update(fleet: Store) -> None:
    m = fleet.create_mapping(name="m", source="src", source_path="/a", targets=[("t1", "/b")])
    u = fleet.update_mapping(
        "m", name="m2", durability="fast", enabled=False, targets=[("t2", "/z")], exclude=["~$"]
    )
    assert (u.id, u.name, u.durability, u.enabled, u.exclude) == (
        m.id,
        "m2",
        "fast",
        False,
        ("~$",),
    )
    assert [t.node_id for t in u.targets] == [C]
    assert u.source_path == "/a"
    with pytest.raises(ConfigError, match="cannot be changed"):
        fleet.update_mapping(m.id, colour="red")
    with pytest.raises(NotFound):
        fleet.update_mapping(999, name="x")


def test_delete(fleet: Store) -> None:
    m = fleet.create_mapping(name="m", source="src", source_path="/a", targets=[("t1", "/b")])
    fleet.delete_mapping(m.id)
    assert fleet.list_mappings() == []
    with pytest.raises(NotFound, match="Mapping"):
        fleet.delete_mapping(m.id)
    with pytest.raises(NotFound):
        fleet.get_mapping("m")


def test_assignment_for(fleet: Store) -> None:
    m1 = fleet.create_mapping(
        name="m1", source="src", source_path="/a", targets=[("t1", "/b"), ("t2", "/c")]
    )
    m2 = fleet.create_mapping(name="m2", source="t1", source_path="/x", targets=[("other", "/y")])
    src = fleet.assignment_for(A)
    assert src.epoch == fleet.epoch() == 2
    assert [s.mapping_id for s in src.mappings] == [m1.id]
    assert src.mappings[0].source_node == A
    assert {(t.node_id, t.path) for t in src.mappings[0].targets} == {(B, "/b"), (C, "/c")}
    assert set(src.peers) == {
        PeerInfo(node_id=B, name="t1", address="t1:7001"),
        PeerInfo(node_id=C, name="t2", address="t2:7001"),
    }
    t1 = fleet.assignment_for(B)
    assert [s.mapping_id for s in t1.mappings] == [m1.id, m2.id]
    assert {p.node_id for p in t1.peers} == {A, C, D}
    other = fleet.assignment_for(D)
    assert [s.mapping_id for s in other.mappings] == [m2.id]
    assert [p.node_id for p in other.peers] == [B]
    nobody = fleet.assignment_for("f" * 64)
    assert (nobody.mappings, nobody.peers, nobody.epoch) == ((), (), 2)
    fleet.upsert_server(node_id=B, name="t1", region="eu", group="g", address="t1:9999")
    again = fleet.assignment_for(A)
    assert again.epoch == 3
    assert PeerInfo(node_id=B, name="t1", address="t1:9999") in again.peers


def test_mapping_ids_are_never_reused(fleet: Store) -> None:
    """Agents keep journals and watermarks under the id: a new mapping must not inherit them."""
    first = fleet.create_mapping(name="a", source="src", source_path="/srv/a", targets=[("t1", "/a")])
    second = fleet.create_mapping(name="b", source="src", source_path="/srv/b", targets=[("t1", "/b")])
    fleet.delete_mapping(second.id)
    fleet.delete_mapping(first.id)
    third = fleet.create_mapping(name="c", source="src", source_path="/srv/c", targets=[("t1", "/c")])
    assert third.id > second.id > first.id
