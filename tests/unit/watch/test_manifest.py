"""Tests for watch.manifest: CRUD, subtree moves and cached directory hashes."""

from __future__ import annotations

import random
import sqlite3
import threading
from pathlib import Path

import pytest
import xxhash

from relaysync.watch import manifest as manifest_module
from relaysync.watch.manifest import SCHEMA_VERSION, Entry, Manifest, _child_record


def f(path: str, content: bytes = b"x", *, mtime_ns: int = 1, mode: int = 0o644) -> Entry:
    return Entry(
        path=path,
        kind="f",
        size=len(content),
        mtime_ns=mtime_ns,
        mode=mode,
        hash=content.ljust(16, b"\0")[:16],
    )


def d(path: str) -> Entry:
    return Entry(path=path, kind="d", mode=0o755)


def sample() -> list[Entry]:
    return [
        d("a"),
        f("a/x", b"1"),
        d("a/b"),
        f("a/b/y", b"2"),
        f("top", b"3"),
        Entry(path="link", kind="l", hash=b"h" * 16, link_target="top"),
    ]


def test_put_get_children_count(manifest: Manifest) -> None:
    manifest.put_many(sample())
    assert manifest.get("a/b/y") == f("a/b/y", b"2")
    assert manifest.get("nope") is None
    assert [e.path for e in manifest.children("")] == ["a", "link", "top"]
    assert [e.path for e in manifest.children("a")] == ["a/b", "a/x"]
    assert manifest.count() == 6
    assert [e.path for e in manifest.iter_entries()] == sorted(e.path for e in sample())


def test_iter_entries_pages_and_subtree(manifest: Manifest) -> None:
    manifest.put_many([f(f"d/{i:05d}") for i in range(4500)] + [d("d"), f("e")])
    paths = [e.path for e in manifest.iter_entries()]
    assert paths == sorted(paths) and len(paths) == 4502
    assert len(list(manifest.iter_entries("d"))) == 4500


def test_remove_tree(manifest: Manifest) -> None:
    manifest.put_many(sample() + [f("a-b"), f("ab")])
    removed = manifest.remove_tree("a")
    assert removed == ["a", "a/b", "a/b/y", "a/x"]
    assert manifest.get("a-b") and manifest.get("ab") and manifest.get("top")
    assert manifest.count() == 4


def test_count_trees_counts_each_path_and_what_is_below_it(manifest: Manifest) -> None:
    manifest.put_many(sample() + [f("a-b"), f("ab")])
    assert manifest.count_trees(["a"]) == 4  # a, a/b, a/b/y, a/x; not a-b nor ab
    assert manifest.count_trees(["a", "top", "link", "gone"]) == 6
    assert manifest.count_trees([]) == 0


def test_count_trees_stops_at_its_limit(manifest: Manifest) -> None:
    """The guard asks only whether a threshold is reached: a bounded walk of the primary key,
    however big the subtree, and per chunk of plain files (one query for 500 of them)."""
    manifest.put_many([d("big")] + [f(f"big/{i:06d}") for i in range(20_000)])
    manifest.put_many([f(f"flat{i:05d}") for i in range(3000)])
    assert manifest.count_trees(["big"]) == 20_001
    assert manifest.count_trees(["big"], limit=100) == 100
    flat = [f"flat{i:05d}" for i in range(3000)]
    assert manifest.count_trees(flat) == 3000
    assert manifest.count_trees(flat, limit=700) == 700
    queries: list[str] = []
    manifest._db.set_trace_callback(queries.append)
    try:
        assert manifest.count_trees(["big", *flat], limit=1000) == 1000
    finally:
        manifest._db.set_trace_callback(None)
    assert len(queries) <= 2, queries
    plans = [row[-1] for q in queries for row in manifest._db.execute(f"EXPLAIN QUERY PLAN {q}")]
    assert not any(plan.startswith("SCAN entries") for plan in plans), plans


def test_rename_tree_moves_subtree_and_overwrites(manifest: Manifest) -> None:
    manifest.put_many(sample() + [d("z"), f("z/old")])
    manifest.rename_tree("a", "z")
    assert manifest.get("a") is None and manifest.get("a/x") is None
    assert manifest.get("z/old") is None
    assert manifest.get("z/b/y") == f("z/b/y", b"2")
    assert [e.path for e in manifest.children("z")] == ["z/b", "z/x"]
    assert [e.path for e in manifest.children("z/b")] == ["z/b/y"]


def test_rename_keeps_dir_hash_of_moved_dir(manifest: Manifest) -> None:
    manifest.put_many(sample())
    before = manifest.dir_hash("a")
    manifest.rename_tree("a", "q")
    assert manifest.dir_hash("q") == before
    fresh = Manifest(manifest._path.with_name("other.db"))
    fresh.put_many([d("q"), f("q/x", b"1"), d("q/b"), f("q/b/y", b"2")])
    assert fresh.dir_hash("q") == before
    fresh.close()


def test_dir_hash_independent_of_insertion_order(tmp_path: Path) -> None:
    entries = sample() + [f(f"a/b/n{i}", bytes([i])) for i in range(50)]
    hashes = []
    for seed in range(3):
        shuffled = entries[:]
        random.Random(seed).shuffle(shuffled)
        m = Manifest(tmp_path / f"m{seed}.db")
        for e in shuffled:
            m.put_many([e])
        hashes.append(m.root_hash())
        m.close()
    assert len(set(hashes)) == 1 and len(hashes[0]) == 16


def test_dir_hash_is_the_hash_of_its_child_records(manifest: Manifest) -> None:
    """The hash a directory is compared by: its children's records (`_child_record`) in name
    order, whatever way they are read from the store; a moved subtree keeps its names."""
    manifest.put_many([*sample(), f("a/é~ü", b"4", mtime_ns=2**62, mode=0o600)])
    manifest.rename_tree("a/b", "a/c")

    def expected(path: str) -> bytes:
        hasher = xxhash.xxh3_128()
        for child in manifest.children(path):
            sub = expected(child.path) if child.kind == "d" else b""
            hasher.update(_child_record(child, sub))
        return hasher.digest()

    assert manifest.root_hash() == expected("")
    assert manifest.dir_hash("a") == expected("a") and manifest.dir_hash("a/c") == expected("a/c")


def test_dir_hash_invalidated_up_the_chain(manifest: Manifest) -> None:
    manifest.put_many(sample())
    root, a, ab = manifest.root_hash(), manifest.dir_hash("a"), manifest.dir_hash("a/b")
    manifest.put_many([f("a/b/y", b"changed")])
    assert manifest.dir_hash("a/b") != ab
    assert manifest.dir_hash("a") != a
    assert manifest.root_hash() != root
    manifest.put_many([f("a/b/y", b"2")])
    assert manifest.root_hash() == root
    manifest.put_many([f("a/b/y", b"2", mode=0o600)])
    assert manifest.root_hash() != root
    manifest.remove_tree("a/b/y")
    assert manifest.dir_hash("a/b") == Manifest_empty_hash(manifest)


def Manifest_empty_hash(manifest: Manifest) -> bytes:  # noqa: N802 - reads as a constant
    manifest.put_many([d("empty-dir")])
    value = manifest.dir_hash("empty-dir")
    manifest.remove_tree("empty-dir")
    return value


def test_dir_listing(manifest: Manifest) -> None:
    manifest.put_many(sample())
    listing = manifest.dir_listing("a")
    assert listing.exists and listing.path == "a"
    assert [(e.name, e.kind) for e in listing.entries] == [("b", "d"), ("x", "f")]
    assert listing.entries[0].hash == manifest.dir_hash("a/b")
    assert not manifest.dir_listing("missing").exists
    assert not manifest.dir_listing("top").exists
    assert manifest.dir_listing("").exists


def test_file_replacing_dir_drops_subtree(manifest: Manifest) -> None:
    manifest.put_many(sample())
    manifest.put_many([f("a", b"now a file")])
    assert manifest.get("a/x") is None and manifest.count() == 3


@pytest.mark.parametrize("per_statement", [1_000, 2], ids=["one statement", "in chunks"])
def test_files_replacing_dirs_drop_only_what_is_below_them(
    manifest: Manifest, monkeypatch: pytest.MonkeyPatch, per_statement: int
) -> None:
    """Several directories replaced in one call: each one's subtree goes, with its cached
    hashes; names that sort right beside "a/" ("a.b", "a-", "a0", "ab") and the same names in
    other scripts stay. The paths go to SQLite in bounded chunks (review: one parameter could
    pass SQLite's length limit on a start-up scan of millions of files)."""
    monkeypatch.setattr(manifest_module, "JSON_PATHS", per_statement)
    names = ["a", "a.b", "a-", "a0", "ab", "é", "é0", "日本", "日本語"]
    tree = [e for n in names for e in (d(n), f(f"{n}/x"), d(f"{n}/s"), f(f"{n}/s/y"))]
    manifest.put_many(tree)
    before = {n: manifest.dir_hash(n) for n in names}
    manifest.put_many([f("a", b"file"), f("é", b"file"), f("日本", b"file")])
    kept = sorted(e.path for e in manifest.iter_entries())
    assert kept == sorted(
        ["a", "é", "日本"]
        + [e.path for e in tree if e.path.split("/")[0] not in ("a", "é", "日本")]
    )
    for n in ("a.b", "a-", "a0", "ab", "é0", "日本語"):
        assert manifest.dir_hash(n) == before[n]
    assert manifest._db.execute(
        "SELECT count(*) FROM dirhash WHERE path IN ('a', 'a/s', 'é/s', '日本/s')"
    ).fetchone() == (0,)


def test_one_call_keeps_the_order_of_its_entries(manifest: Manifest) -> None:
    """Within one put_many, a later file over a directory drops what came before below it, and
    what comes after it stays (the same result as putting the entries one at a time)."""
    manifest.put_many(
        [d("a"), f("a/x"), f("a", b"file"), d("b"), f("b/y"), f("c"), d("c"), f("c/z")]
    )
    assert manifest.get("a") == f("a", b"file") and manifest.get("a/x") is None
    assert manifest.get("b/y") is not None
    assert manifest.get("c") == d("c") and manifest.get("c/z") is not None
    one_by_one = Manifest(manifest._path.with_name("one.db"))
    for e in [d("a"), f("a/x"), f("a", b"file"), d("b"), f("b/y"), f("c"), d("c"), f("c/z")]:
        one_by_one.put_many([e])
    assert list(one_by_one.iter_entries()) == list(manifest.iter_entries())
    assert one_by_one.root_hash() == manifest.root_hash()


def test_meta_and_reopen(tmp_path: Path) -> None:
    m = Manifest(tmp_path / "m.db")
    m.put_many(sample())
    m.set_meta("journal_seq", "42")
    root = m.root_hash()
    m.close()
    m = Manifest(tmp_path / "m.db")
    assert m.get_meta("journal_seq") == "42" and m.get_meta("x") is None
    assert m.root_hash() == root
    m.close()


def test_usable_from_worker_threads(manifest: Manifest) -> None:
    errors: list[BaseException] = []

    def work(n: int) -> None:
        try:
            manifest.put_many([f(f"t{n}/{i}") for i in range(50)])
            manifest.root_hash()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and manifest.count() == 200


def test_root_hash_of_100k_entries_is_cached(
    manifest: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    entries = [d(f"d{i}") for i in range(100)]
    entries += [f(f"d{i}/f{j}", str(j).encode()) for i in range(100) for j in range(1000)]
    manifest.put_many(entries)
    first = manifest.root_hash()
    # Which directories are hashed again, counted rather than timed (a loaded CI stretches time).
    hashed: list[str] = []
    store_hash = manifest._store_hash
    monkeypatch.setattr(
        manifest, "_store_hash", lambda path: (hashed.append(path), store_hash(path))
    )
    assert manifest.root_hash() == first
    assert hashed == []
    manifest.put_many([f("d7/f3", b"new")])
    assert manifest.root_hash() != first
    # Only d7 and the root are recomputed: a few thousand rows, not 100,000.
    assert sorted(hashed) == ["", "d7"]


def test_manifest_of_an_older_release_is_migrated_once(tmp_path: Path) -> None:
    """Schema version 0 had no `ino`: it is added (0 = unknown), indexed, and the version set."""
    import sqlite3

    db = tmp_path / "old.db"
    old = sqlite3.connect(db)
    old.executescript("""
        CREATE TABLE entries (path TEXT PRIMARY KEY, parent TEXT NOT NULL, name TEXT NOT NULL,
            kind TEXT NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
            mode INTEGER NOT NULL, hash BLOB NOT NULL, link_target TEXT NOT NULL) WITHOUT ROWID;
        INSERT INTO entries VALUES ('top', '', 'top', 'f', 1, 1, 420, x'00', '');
    """)
    old.commit()
    old.close()
    for _ in range(2):  # and a second open finds nothing to do
        m = Manifest(db)
        assert m.get("top") == Entry(
            path="top", kind="f", size=1, mtime_ns=1, mode=0o644, hash=b"\0"
        )
        m.put_many([Entry(path="new", kind="f", ino=7), Entry(path="also", kind="f", ino=7)])
        assert m.paths_with_inode(7) == ["also", "new"] and m.paths_with_inode(0) == []
        m.close()
    check = sqlite3.connect(db)
    assert check.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    plan = check.execute(
        "EXPLAIN QUERY PLAN SELECT path FROM entries WHERE ino = 7 AND ino != 0"
    ).fetchall()
    assert "entries_ino" in str(plan)
    check.close()


def test_set_stat_notes_changes_no_directory_hash(manifest: Manifest) -> None:
    manifest.put_many(sample())
    before = manifest.root_hash()
    manifest.set_stat_notes([("a/x", 11, 5), ("gone", 12, 6)])
    assert (manifest.get("a/x").ino, manifest.get("a/x").ctime_ns) == (11, 5)  # type: ignore[union-attr]
    assert manifest.root_hash() == before and manifest.get("gone") is None


def test_a_commit_that_fails_leaves_no_transaction_open(manifest: Manifest) -> None:
    """A COMMIT that fails without rolling back (here a deferred constraint; SQLITE_BUSY does the
    same) ran outside _txn's try in the old code: no ROLLBACK, the transaction stayed open, and
    every later write of the manifest failed ("cannot start a transaction within a transaction")."""
    db = manifest._db
    db.execute("PRAGMA foreign_keys = ON")
    db.execute("CREATE TABLE owner (id INTEGER PRIMARY KEY)")
    db.execute(
        "CREATE TABLE owned (owner INTEGER REFERENCES owner (id) DEFERRABLE INITIALLY DEFERRED)"
    )
    with pytest.raises(sqlite3.IntegrityError), manifest._txn() as txn:
        txn.execute("INSERT INTO owned VALUES (7)")  # checked at COMMIT only
    assert not db.in_transaction
    manifest.put_many([f("after")])
    assert manifest.get("after") == f("after")
    assert db.execute("SELECT count(*) FROM owned").fetchone()[0] == 0  # rolled back


def test_a_manifest_that_cannot_be_opened_closes_its_connection(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A corrupt file: the open raises and closes the connection it made (it was left to the
    garbage collector, holding the file's descriptor)."""
    db = tmp_path / "manifest.db"
    db.write_bytes(b"not a database, " * 512)
    made: list[sqlite3.Connection] = []
    connect = sqlite3.connect

    def recording(*args: object, **kwargs: object) -> sqlite3.Connection:
        made.append(connect(*args, **kwargs))  # type: ignore[arg-type]
        return made[-1]

    monkeypatch.setattr(sqlite3, "connect", recording)
    with pytest.raises(sqlite3.DatabaseError):
        Manifest(db)
    assert len(made) == 1
    with pytest.raises(sqlite3.ProgrammingError, match="closed"):
        made[0].execute("SELECT 1")
