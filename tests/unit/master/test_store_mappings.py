"""Store: mappings, their validation, the epoch, and the assignment each node gets."""

from __future__ import annotations

import pytest

from relaysync.errors import ConfigError, NotFound
from relaysync.master.store import Store
from relaysync.master.store.models import Mapping, MappingTarget
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
        # which role, and the servers there are: "Server 'ghost' not found" said neither
        (
            {"source": "ghost"},
            NotFound,
            r"source server 'ghost' .* \(servers: other, src, t1, t2\)",
        ),
        (
            {"targets": [("ghost", "/x")]},
            NotFound,
            r"target server 'ghost' .* \(servers: other, src, t1, t2\)",
        ),
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


def test_a_mapping_whose_source_is_revoked_goes_out_disabled_until_it_has_another(
    fleet: Store,
) -> None:
    """POST /api/servers/src/revoke (a stolen key): t1 was still given m1 with source_node src,
    and took src's data (its agent falls back to the source as parent). Now m1 goes out to every
    node disabled (its targets retire the folder, keeping its files) and src is no peer; m2,
    whose source is another, is untouched; a new source serves m1 again."""
    m1 = fleet.create_mapping(name="m1", source="src", source_path="/a", targets=[("t1", "/b")])
    m2 = fleet.create_mapping(name="m2", source="t2", source_path="/x", targets=[("t1", "/y")])
    fleet.revoke_server("src")
    t1 = fleet.assignment_for(B)
    assert [(s.mapping_id, s.source_node, s.enabled) for s in t1.mappings] == [
        (m1.id, A, False),
        (m2.id, C, True),
    ]
    assert [p.node_id for p in t1.peers] == [C]
    assert [s.enabled for s in fleet.assignment_for(A).mappings] == [False]
    fleet.update_mapping(m1.id, source="other", source_path="/a")
    (spec, _) = fleet.assignment_for(B).mappings
    assert (spec.source_node, spec.enabled) == (D, True)


def test_mapping_ids_are_never_reused(fleet: Store) -> None:
    """Agents keep journals and watermarks under the id: a new mapping must not inherit them."""
    first = fleet.create_mapping(
        name="a", source="src", source_path="/srv/a", targets=[("t1", "/a")]
    )
    second = fleet.create_mapping(
        name="b", source="src", source_path="/srv/b", targets=[("t1", "/b")]
    )
    fleet.delete_mapping(second.id)
    fleet.delete_mapping(first.id)
    third = fleet.create_mapping(
        name="c", source="src", source_path="/srv/c", targets=[("t1", "/c")]
    )
    assert third.id > second.id > first.id


# --- Folder rules: a target is made identical to its source, erasing what the source lacks ---


@pytest.mark.parametrize(
    "path",
    [
        "/",
        "//",
        "/etc",
        "/etc/",
        "//etc",
        "/usr",
        "/boot",
        "/boot/grub",
        "/var",
        "/var/lib",
        "/proc/1",
        "/sys",
        "/dev/shm",
        "/run",
    ],
)
@pytest.mark.parametrize("role", ["source", "target"])
def test_system_folders_are_refused(fleet: Store, path: str, role: str) -> None:
    args = {"source_path": path} if role == "source" else {"targets": [("t1", path)]}
    with pytest.raises(
        ConfigError, match=f"{role} folder .* is (a system folder|in the system tree)"
    ):
        fleet.create_mapping(
            **{
                "name": "m",
                "source": "src",
                "source_path": "/srv",
                "targets": [("t1", "/dst")],
                **args,
            }
        )
    assert fleet.list_mappings() == [] and fleet.epoch() == 0


@pytest.mark.parametrize(
    "path", ["/etc/nginx/sites", "/usr/local/www", "/var/www", "/srv", "/home/web"]
)
def test_folders_below_system_folders_are_allowed(fleet: Store, path: str) -> None:
    fleet.create_mapping(name="m", source="src", source_path="/data/site", targets=[("t1", path)])


@pytest.mark.parametrize(
    ("source_path", "target_path"),
    [
        (
            "/srv/docs",
            "/srv/docs/mirror",
        ),  # the copy lands in the watched tree: it replicates itself
        ("/srv/docs", "/srv"),  # the target's comparison erases /srv/* but the source's own names
    ],
)
def test_one_server_source_and_target_that_contain_each_other_are_refused(
    fleet: Store, source_path: str, target_path: str
) -> None:
    with pytest.raises(ConfigError, match="on one server and contain each other"):
        fleet.create_mapping(
            name="m", source="src", source_path=source_path, targets=[("src", target_path)]
        )
    assert fleet.list_mappings() == []


@pytest.mark.parametrize(
    ("first", "second"),
    [
        # (server, path, role) of an existing mapping, then of the new one: every pair with a target
        (("t1", "/srv/www", "target"), ("t1", "/srv", "target")),
        (("t1", "/srv", "target"), ("t1", "/srv/www", "target")),
        (
            ("t1", "/srv/www", "target"),
            ("t1", "/srv/www", "target"),
        ),  # two sources fighting over one tree
        (("t1", "/srv/www", "target"), ("t1", "/srv/www/assets", "source")),
        (("t1", "/srv/www", "target"), ("t1", "/srv", "source")),
        (
            ("t1", "/srv/www", "target"),
            ("t1", "/srv/www", "source"),
        ),  # a chain: use a relay route instead
        (
            ("t1", "/srv/www", "source"),
            ("t1", "/srv", "target"),
        ),  # would erase the other mapping's source
        (("t1", "/srv/www", "source"), ("t1", "/srv/www/copy", "target")),
    ],
)
def test_folders_of_two_mappings_that_contain_each_other_on_one_server_are_refused(
    fleet: Store, first: tuple[str, str, str], second: tuple[str, str, str]
) -> None:
    def mapping(name: str, server: str, path: str, role: str) -> dict:
        if role == "source":
            return {
                "name": name,
                "source": server,
                "source_path": path,
                "targets": [("other", f"/{name}")],
            }
        return {
            "name": name,
            "source": "other",
            "source_path": f"/{name}",
            "targets": [(server, path)],
        }

    fleet.create_mapping(**mapping("old", *first))
    with pytest.raises(
        ConfigError,
        match=r"of mapping 'new' and the \w+ folder /srv\S* of mapping 'old' "
        r"are on one server and contain each other",
    ):
        fleet.create_mapping(**mapping("new", *second))
    # ...and the same through an update of a mapping that did not clash before
    fleet.create_mapping(**mapping("new", "t2", second[1], second[2]))
    fields = (
        {"source": second[0], "source_path": second[1]}
        if second[2] == "source"
        else {"targets": [(second[0], second[1])]}
    )
    with pytest.raises(ConfigError, match="contain each other"):
        fleet.update_mapping("new", **fields)


def test_sources_may_nest_and_other_servers_may_use_any_folder(fleet: Store) -> None:
    fleet.create_mapping(
        name="all", source="src", source_path="/srv", targets=[("t1", "/mirror/all")]
    )
    fleet.create_mapping(
        name="www", source="src", source_path="/srv/www", targets=[("t1", "/mirror/www")]
    )
    fleet.create_mapping(
        name="back", source="t2", source_path="/srv", targets=[("src", "/backup/t2")]
    )
    fleet.create_mapping(
        name="same", source="t2", source_path="/mirror", targets=[("other", "/mirror")]
    )
    assert len(fleet.list_mappings()) == 4


def test_members_of_one_nm_job_share_their_target_folder(fleet: Store) -> None:
    job = fleet.nm_jobs.create(
        name="dc", sources=[("src", "/a"), ("t2", "/b")], targets=[("t1", "/union")]
    )
    members = fleet.nm_jobs.get(job.id).members
    for member in members:  # an update of one member keeps the folder it shares
        fleet.update_mapping(member.mapping_id, exclude=["~$"])
    with pytest.raises(ConfigError, match="contain each other"):  # a second job may not write there
        fleet.nm_jobs.create(name="dc2", sources=[("src", "/c")], targets=[("t1", "/union")])
    with pytest.raises(ConfigError, match="contain each other"):  # nor a plain mapping
        fleet.create_mapping(
            name="m", source="other", source_path="/c", targets=[("t1", "/union/c")]
        )


def test_a_mapping_stored_before_the_rules_can_still_be_changed_but_not_moved_onto_bad_folders(
    fleet: Store,
) -> None:
    with fleet._write("a mapping from an older release") as session:
        session.add(
            Mapping(
                id=1,
                name="old",
                source_node=A,
                source_path="/srv",
                include=[],
                exclude=[],
                durability="safe",
                enabled=True,
                created_at=0.0,
                updated_at=0.0,
            )
        )
        session.flush()
        session.add(MappingTarget(mapping_id=1, node_id=B, path="/etc"))
    assert fleet.update_mapping("old", enabled=False).enabled is False  # it can be stopped
    with pytest.raises(ConfigError, match="system folder"):
        fleet.update_mapping("old", targets=[("t1", "/etc"), ("t2", "/usr")])


def test_the_target_policy_travels_in_the_assignment(fleet: Store) -> None:
    """What the targets let land (watch/target_policy.py) goes to every agent of the mapping."""
    m = fleet.create_mapping(name="m", source="src", source_path="/a", targets=[("t1", "/b")])
    assert fleet.modes.get_target_policy(m.id) == ("", 0o002)
    (spec,) = fleet.assignment_for(B).mappings
    assert (spec.symlinks, spec.mode_mask) == ("", 0o002)
    fleet.modes.set_target_policy(m.id, "any", 0)
    (spec,) = fleet.assignment_for(B).mappings
    assert (spec.symlinks, spec.mode_mask) == ("any", 0)
    (spec,) = fleet.assignment_for(A).mappings
    assert (spec.symlinks, spec.mode_mask) == ("any", 0)
    with pytest.raises(ConfigError, match="symlink policy"):
        fleet.modes.set_target_policy(m.id, "all", 0)
    with pytest.raises(ConfigError, match="mode mask"):
        fleet.modes.set_target_policy(m.id, "safe", 0o1000)


@pytest.mark.parametrize("mask", [0o200, 0o100, 0o400, 0o722, 0o777])
def test_a_mode_mask_that_removes_owner_bits_is_refused(fleet: Store, mask: int) -> None:
    """Directories without u+w or u+x: a target agent that is not root got EACCES for ever."""
    m = fleet.create_mapping(name="m", source="src", source_path="/a", targets=[("t1", "/b")])
    with pytest.raises(ConfigError, match="removes the owner's bits"):
        fleet.modes.set_target_policy(m.id, "safe", mask)
    assert fleet.modes.get_target_policy(m.id) == ("", 0o002)
    fleet.modes.set_target_policy(m.id, "safe", 0o077)  # group and others: all of them may go
    assert fleet.modes.get_target_policy(m.id) == ("safe", 0o077)
