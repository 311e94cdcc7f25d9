"""N:M jobs in the store: member mappings, the tag in assignments, validation, conflicts; both databases."""

from __future__ import annotations

import pytest

from relaysync.errors import ConfigError, NotFound
from relaysync.master.store import Store
from relaysync.protocol.messages import CommitRecord, CommitReport

NODES = {name: name * 8 for name in ("src1", "src2", "t1", "t2")}


@pytest.fixture
def fleet(store: Store) -> Store:
    for name, node in NODES.items():
        store.upsert_server(node_id=node, name=name, region="r", group="g", address=f"{name}:1")
    return store


def _create(store: Store, name: str = "dc1") -> int:
    job = store.nm_jobs.create(
        name=name,
        sources=[("src1", "/a"), ("src2", "/b")],
        targets=[("t1", "/x"), ("t2", "/y")],
        include=[r"\.html$"],
    )
    return job.id


def test_create_makes_one_member_mapping_per_source(fleet: Store) -> None:
    job = fleet.nm_jobs.get(_create(fleet))
    assert [m.name for m in job.members] == ["dc1@src1", "dc1@src2"]
    assert [(n, p) for _, n, p in job.targets] == [("t1", "/x"), ("t2", "/y")]
    mappings = {m.name: m for m in fleet.list_mappings()}
    assert all(mappings[n].include == (r"\.html$",) for n in ("dc1@src1", "dc1@src2"))
    assert {(t.name, t.path) for t in mappings["dc1@src2"].targets} == {("t1", "/x"), ("t2", "/y")}
    specs = fleet.assignment_for(NODES["t1"]).mappings
    assert [(s.conflict, s.job_id) for s in specs] == [("newest-mtime", job.id)] * 2
    fleet.create_mapping(name="plain", source="src1", source_path="/p", targets=[("t1", "/q")])
    plain = [s for s in fleet.assignment_for(NODES["src1"]).mappings if s.name == "plain"]
    assert (plain[0].conflict, plain[0].job_id) == ("", 0)
    assert [j.name for j in fleet.nm_jobs.list_jobs()] == ["dc1"]


def test_delete_removes_the_member_mappings(fleet: Store) -> None:
    job_id = _create(fleet)
    fleet.nm_jobs.delete("dc1")
    assert fleet.list_mappings() == []
    with pytest.raises(NotFound):
        fleet.nm_jobs.get(job_id)
    _create(fleet)  # the names are free again


@pytest.mark.parametrize(
    ("sources", "targets", "match"),
    [
        ([], [("t1", "/x")], "at least one source"),
        ([("src1", "/a")], [], "at least one source"),
        ([("src1", "/a"), ("t1", "/b")], [("t1", "/x")], "both a source and a target"),
        ([("src1", "/a"), ("src1", "/b")], [("t1", "/x")], "twice"),
        ([("src1", "relative")], [("t1", "/x")], "absolute"),
    ],
)
def test_bad_jobs_are_refused_and_change_nothing(
    fleet: Store, sources: list, targets: list, match: str
) -> None:
    epoch = fleet.epoch()
    with pytest.raises(ConfigError, match=match):
        fleet.nm_jobs.create(name="bad", sources=sources, targets=targets)
    assert (
        fleet.list_mappings() == [] and fleet.nm_jobs.list_jobs() == [] and fleet.epoch() == epoch
    )


def test_bad_names_and_unknown_servers(fleet: Store) -> None:
    for name in ("", "123", "a@b"):
        with pytest.raises(ConfigError):
            fleet.nm_jobs.create(name=name, sources=[("src1", "/a")], targets=[("t1", "/x")])
    with pytest.raises(NotFound):
        fleet.nm_jobs.create(name="j", sources=[("nope", "/a")], targets=[("t1", "/x")])
    _create(fleet)
    with pytest.raises(ConfigError, match="already used"):
        _create(fleet)


def test_conflicts_are_recorded_once_with_winner_and_loser(fleet: Store) -> None:
    job = fleet.nm_jobs.get(_create(fleet))
    m1, m2 = job.members
    lost = CommitRecord(
        seq=3,
        op="write",
        path="x",
        committed_at=1000.5,
        conflict="older",
        conflict_with=NODES["src2"],
    )
    won = CommitRecord(
        seq=4,
        op="write",
        path="y",
        committed_at=1001.0,
        conflict="newer",
        conflict_with=NODES["src1"],
    )
    reports = [
        CommitReport(
            mapping_id=m1.mapping_id,
            source_node=NODES["src1"],
            target_node=NODES["t1"],
            watermark=3,
            records=(lost, CommitRecord(seq=2, op="write", path="plain")),
        ),
        CommitReport(
            mapping_id=m2.mapping_id,
            source_node=NODES["src2"],
            target_node=NODES["t2"],
            watermark=4,
            records=(won,),
        ),
    ]
    fleet.record_commit_reports(reports)
    out = fleet.nm_jobs.record_conflicts(reports)
    assert {(c.path, c.winner_node, c.loser_node) for c in out} == {
        ("x", NODES["src2"], NODES["src1"]),
        ("y", NODES["src2"], NODES["src1"]),
    }
    fleet.nm_jobs.record_conflicts(reports)  # a repeated report adds nothing
    kept = fleet.nm_jobs.conflicts("dc1")
    assert [(c.path, c.reason, c.job) for c in kept] == [
        ("y", "newer", "dc1"),
        ("x", "older", "dc1"),
    ]
    assert (
        len(fleet.job_log(mapping_id=m1.mapping_id)) == 2
    )  # the job log has its change rows as usual
