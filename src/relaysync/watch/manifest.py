"""The manifest: one side's view of a mapping's tree, on disk in SQLite, with directory hashes.

Directory hashes let two manifests be compared top-down: equal root hashes mean equal trees,
and a differing directory is narrowed down by comparing its listing. They are cached in the
`dirhash` table and invalidated up the parent chain whenever an entry changes, so an unchanged
manifest answers `root_hash()` with one indexed read. What an entry is, and the path arithmetic
the manifest keys by, are watch/_entry.py.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import msgspec
import xxhash

from relaysync.protocol.messages import DirEntry, DirListing
from relaysync.watch._entry import Entry, ancestors, split_path, subtree_bounds
from relaysync.watch._entry import mtime_ns_of as mtime_ns_of
from relaysync.watch._entry import permission_bits as permission_bits
from relaysync.watch._entry import same_version as same_version

logger = logging.getLogger(__name__)

_PAGE_ROWS = 2000  # iter_entries reads this many rows per query, so no cursor outlives the lock
_COUNT_CHUNK = 500  # count_trees looks up this many paths per query (SQLite allows 32,766 params)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS entries (
    path TEXT PRIMARY KEY, parent TEXT NOT NULL, name TEXT NOT NULL, kind TEXT NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, mode INTEGER NOT NULL,
    hash BLOB NOT NULL, link_target TEXT NOT NULL, ino INTEGER NOT NULL DEFAULT 0,
    ctime_ns INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS entries_parent ON entries (parent, name);
CREATE TABLE IF NOT EXISTS dirhash (path TEXT PRIMARY KEY, hash BLOB NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""
# Partial: rows without an inode number (directories, links, every row of a target's manifest)
# cost the index nothing.
_INO_INDEX = "CREATE INDEX IF NOT EXISTS entries_ino ON entries (ino) WHERE ino != 0"
# PRAGMA user_version: 0 = no `ino` column (releases before hard links were followed), 1 = ino,
# 2 = ctime_ns (releases before scans looked at ctime).
SCHEMA_VERSION = 2
# Statements over a JSON array of paths (one parameter, json_each): a batch's rows are sought in
# SQLite's own loop, not one executemany step (bind, step, reset) each: 10,000 files' deletes
# below them cost about half (watch/manifest.py `_delete_below`).
_DELETE_BELOW = {
    table: f"DELETE FROM {table} WHERE path IN (SELECT t.path FROM json_each(?) AS j "
    f"JOIN {table} AS t ON t.path >= j.value || '/' AND t.path < j.value || '0')"
    for table in ("entries", "dirhash")
}
_DELETE_DIRHASHES = "DELETE FROM dirhash WHERE path IN (SELECT value FROM json_each(?))"
JSON_PATHS = 1_000  # paths per such statement (4 KiB each at most, 6 bytes a character escaped)

_COLUMNS = "path, kind, size, mtime_ns, mode, hash, link_target, ino, ctime_ns"
_encode = msgspec.msgpack.Encoder().encode


def _row_to_entry(row: tuple) -> Entry:  # type: ignore[type-arg]
    path, kind, size, mtime_ns, mode, hash_, link_target, ino, ctime_ns = row
    return Entry(
        path=path,
        kind=kind,
        size=size,
        mtime_ns=mtime_ns,
        mode=mode,
        hash=hash_,
        link_target=link_target,
        ino=ino,
        ctime_ns=ctime_ns,
    )


def _child_record(entry: Entry, dir_hash: bytes) -> bytes:
    name = split_path(entry.path)[1]
    if entry.kind == "d":
        return _encode((name, "d", dir_hash))
    if entry.kind == "l":
        return _encode((name, "l", entry.hash))
    return _encode((name, "f", entry.hash, entry.size, entry.mode, entry.mtime_ns))


class Manifest:
    """An on-disk manifest (SQLite, WAL) of one side of a mapping.

    Args:
        db_path: the SQLite file; created with its tables if missing.

    Resource handling: one connection, usable from any thread (calls are serialised by a lock);
    `close()` releases it.
    """

    def __init__(self, db_path: Path) -> None:
        self._path = db_path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(db_path), check_same_thread=False, isolation_level=None)
        try:
            self._db.execute("PRAGMA journal_mode=WAL")
            # The journal is the durable record; a manifest that lost its last commits is
            # repaired by a scan.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._migrate()
        except BaseException:  # a corrupt file: no connection left to the garbage collector
            self._db.close()
            raise

    def _migrate(self) -> None:
        """Bring a manifest written by an older release to SCHEMA_VERSION (PRAGMA user_version).

        Version 0 lacks `ino`, version 1 `ctime_ns`: a missing column is added with 0 (unknown) in
        every row, and the start-up scan fills it in (`ChangeRecorder`, stat notes) without
        journaling anything: an unknown ctime is no reason to hash a file again.
        """
        with self._txn() as db:
            version = db.execute("PRAGMA user_version").fetchone()[0]
            if version >= SCHEMA_VERSION:
                return
            columns = {row[1] for row in db.execute("PRAGMA table_info(entries)")}
            for column in ("ino", "ctime_ns"):
                if column not in columns:
                    db.execute(
                        f"ALTER TABLE entries ADD COLUMN {column} INTEGER NOT NULL DEFAULT 0"
                    )
            db.execute(_INO_INDEX)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    @property
    def path(self) -> Path:
        """The SQLite file (what an operator is told to look at when it cannot be written)."""
        return self._path

    @contextmanager
    def _txn(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                # A COMMIT that failed may leave the transaction open (SQLITE_BUSY, a deferred
                # constraint) or have rolled it back itself (SQLITE_FULL, IOERR): open, every
                # later BEGIN of this connection would fail.
                if self._db.in_transaction:
                    try:
                        self._db.execute("ROLLBACK")
                    except sqlite3.Error as exc:  # the first failure is the one to report
                        logger.warning("manifest %s: rollback failed: %s", self._path, exc)
                raise

    # --- entries ---

    def get(self, path: str) -> Entry | None:
        """Return the entry at `path`, or None."""
        with self._lock:
            row = self._db.execute(
                f"SELECT {_COLUMNS} FROM entries WHERE path = ?", (path,)
            ).fetchone()
        return _row_to_entry(row) if row else None

    def put_many(self, entries: Iterable[Entry]) -> None:
        """Insert or replace entries in one transaction.

        An entry that replaces a directory with a non-directory also drops that directory's
        subtree, including entries of this call before it that lie below it. The statements go
        in bulk (executemany): a row at a time cost 38 µs per entry, most of a 10,000-file sync's
        manifest time on both sides.
        """
        batch = list(entries)
        last_nondir: dict[str, int] = {}  # path -> index of the last non-directory put there
        for i, e in enumerate(batch):
            if not e.path:
                raise ValueError("the root is not stored in the manifest")
            if e.kind != "d":
                last_nondir[e.path] = i
        rows = []
        stale: set[str] = set()
        # parent -> the directories above its children that a non-directory of this call
        # replaces (usually none): ancestors looked up once a parent, not once an entry. A
        # parent's ancestors are stale even if all its entries are skipped: they go with the
        # replaced directory (`_delete_below`), and a dropped cached hash is only computed again.
        replaced_above: dict[str, list[str]] = {}
        for i, e in enumerate(batch):
            parent, name = split_path(e.path)
            replaced = replaced_above.get(parent)
            if replaced is None:
                above = [parent, *ancestors(parent)] if parent else [""]
                stale.update(above)
                replaced = replaced_above[parent] = [a for a in above if a in last_nondir]
            if replaced and any(last_nondir[a] > i for a in replaced):
                continue  # a later file of this call replaces a directory above it
            rows.append(
                (
                    e.path,
                    parent,
                    name,
                    e.kind,
                    e.size,
                    e.mtime_ns,
                    e.mode,
                    e.hash,
                    e.link_target,
                    e.ino,
                    e.ctime_ns,
                )
            )
        stale.update(last_nondir)
        with self._txn() as db:
            self._delete_below(db, *last_nondir)  # what was below a path that is now a file
            db.executemany(
                "INSERT OR REPLACE INTO entries (path, parent, name, kind, size, mtime_ns, mode, hash, "
                "link_target, ino, ctime_ns) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
            _delete_dirhashes(db, stale)

    def set_stat_notes(self, notes: Iterable[tuple[str, int, int]]) -> None:
        """Record the inode number and ctime of existing entries, as (path, ino, ctime_ns);
        missing paths are skipped.

        Only the bookkeeping columns change (no directory hash does): a file replaced by an equal
        one, rewritten with what it held, chmod'ed back, or of an older release's manifest gets
        them without a journal record.
        """
        with self._txn() as db:
            db.executemany(
                "UPDATE entries SET ino = ?, ctime_ns = ? WHERE path = ?",
                ((i, c, p) for p, i, c in notes),
            )

    def paths_with_inode(self, ino: int) -> list[str]:
        """Return the paths of the entries recorded with inode number `ino` (not 0), sorted."""
        if not ino:
            return []
        with self._lock:
            rows = self._db.execute(
                "SELECT path FROM entries WHERE ino = ? AND ino != 0 ORDER BY path", (ino,)
            ).fetchall()
        return [r[0] for r in rows]

    def remove_tree(self, path: str) -> list[str]:
        """Remove `path` and everything below it; return the removed paths, sorted."""
        low, high = subtree_bounds(path)
        with self._txn() as db:
            removed = [
                r[0]
                for r in db.execute(
                    "SELECT path FROM entries WHERE path = ? OR (path >= ? AND path < ?) ORDER BY path",
                    (path, low, high),
                )
            ]
            db.execute("DELETE FROM entries WHERE path = ?", (path,))
            self._delete_below(db, path)
            _delete_dirhashes(db, [path, *ancestors(path)])
        return removed

    def rename_tree(self, old: str, new: str) -> None:
        """Move `old` and its subtree to `new`, replacing whatever was at `new`."""
        if old == new or not old or not new:
            return
        new_parent, new_name = split_path(new)
        with self._txn() as db:
            if db.execute("SELECT 1 FROM entries WHERE path = ?", (old,)).fetchone() is None:
                return
            for table in ("entries", "dirhash"):
                db.execute(f"DELETE FROM {table} WHERE path = ?", (new,))
            self._delete_below(db, new)
            db.execute(
                "UPDATE entries SET path = ?, parent = ?, name = ? WHERE path = ?",
                (new, new_parent, new_name, old),
            )
            low, high = subtree_bounds(old)
            cut = len(old) + 1
            db.execute(
                "UPDATE entries SET path = ? || substr(path, ?), parent = ? || substr(parent, ?) "
                "WHERE path >= ? AND path < ?",
                (new, cut, new, cut, low, high),
            )
            # A directory's hash depends only on what is below it, so cached hashes move with it.
            db.execute(
                "UPDATE dirhash SET path = ? || substr(path, ?) WHERE path = ? OR (path >= ? AND path < ?)",
                (new, cut, old, low, high),
            )
            stale = set(ancestors(old)) | set(ancestors(new))
            _delete_dirhashes(db, stale)

    @staticmethod
    def _delete_below(db: sqlite3.Connection, *paths: str) -> None:
        """Delete every row strictly below each of `paths` ("": below the root, every row)."""
        if "" in paths:
            for table in ("entries", "dirhash"):
                db.execute(f"DELETE FROM {table}")
        else:
            for below in _json_chunks(paths):
                for table in ("entries", "dirhash"):
                    db.execute(_DELETE_BELOW[table], (below,))

    def children(self, dir_path: str) -> list[Entry]:
        """Return the direct children of `dir_path` ("" = root), sorted by name."""
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM entries WHERE parent = ? ORDER BY name", (dir_path,)
            ).fetchall()
        return [_row_to_entry(r) for r in rows]

    def iter_entries(self, under: str = "") -> Iterator[Entry]:
        """Stream every entry (below `under`, if given) sorted by path, a page at a time."""
        low, high = subtree_bounds(under)
        after = low
        inclusive = True
        while True:
            op = ">=" if inclusive else ">"
            with self._lock:
                rows = self._db.execute(
                    f"SELECT {_COLUMNS} FROM entries WHERE path {op} ? AND path < ? "
                    "ORDER BY path LIMIT ?",
                    (after, high, _PAGE_ROWS),
                ).fetchall()
            yield from (_row_to_entry(r) for r in rows)
            if len(rows) < _PAGE_ROWS:
                return
            after, inclusive = rows[-1][0], False

    def links_under(self, path: str) -> list[Entry]:
        """Return the symlinks strictly below `path`, sorted by path."""
        low, high = subtree_bounds(path)
        with self._lock:
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM entries WHERE path >= ? AND path < ? AND kind = 'l' "
                "ORDER BY path",
                (low, high),
            ).fetchall()
        return [_row_to_entry(r) for r in rows]

    def count(self) -> int:
        """Return the number of entries."""
        with self._lock:
            return int(self._db.execute("SELECT count(*) FROM entries").fetchone()[0])

    def count_present(self, paths: Sequence[str]) -> int:
        """Return how many of `paths` (distinct) the manifest holds, _COUNT_CHUNK per query."""
        return sum(int(rows[0][0]) for rows in self._in_chunks("count(*)", paths))

    def _in_chunks(self, columns: str, paths: Sequence[str]) -> Iterator[list[Any]]:
        """The rows of `SELECT columns FROM entries WHERE path IN (...)`, one list per
        _COUNT_CHUNK of `paths` (SQLite bounds the parameters of one query)."""
        for start in range(0, len(paths), _COUNT_CHUNK):
            chunk = paths[start : start + _COUNT_CHUNK]
            marks = ",".join("?" * len(chunk))
            with self._lock:
                rows = self._db.execute(
                    f"SELECT {columns} FROM entries WHERE path IN ({marks})", chunk
                ).fetchall()
            yield rows  # the lock is not held while the caller looks at them

    def count_trees(self, paths: Sequence[str], *, limit: int = -1) -> int:
        """Return how many entries `paths` and everything below them hold (paths must not nest).

        With `limit` >= 0 the count stops there: up to _COUNT_CHUNK paths are looked up per
        query, and only a directory's subtree is counted, as a bounded walk of the primary key.
        """
        total = 0
        for rows in self._in_chunks("path, kind", paths):
            total += len(rows)
            for path in (p for p, kind in rows if kind == "d"):
                if 0 <= limit <= total:
                    return limit
                low, high = subtree_bounds(path)
                with self._lock:
                    row = self._db.execute(
                        "SELECT count(*) FROM (SELECT 1 FROM entries WHERE path >= ? AND path < ? "
                        "LIMIT ?)",
                        (low, high, -1 if limit < 0 else limit - total),
                    ).fetchone()
                total += int(row[0])
            if 0 <= limit <= total:
                return limit
        return total

    # --- directory hashes ---

    def dir_hash(self, dir_path: str) -> bytes:
        """Return the recursive hash of directory `dir_path` ("" = root), from cache if valid."""
        with self._lock:
            cached = self._cached_hash(dir_path)
            if cached is not None:
                return cached
            self._db.execute("BEGIN IMMEDIATE")
            try:
                result = self._compute_hashes(dir_path)
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return result

    def root_hash(self) -> bytes:
        """Return the hash of the whole tree."""
        return self.dir_hash("")

    def _cached_hash(self, dir_path: str) -> bytes | None:
        row = self._db.execute("SELECT hash FROM dirhash WHERE path = ?", (dir_path,)).fetchone()
        return bytes(row[0]) if row else None

    def _compute_hashes(self, top: str) -> bytes:
        # Post-order without recursion: trees can be deeper than Python's recursion limit.
        stack: list[tuple[str, bool]] = [(top, False)]
        while stack:
            path, expanded = stack.pop()
            if self._cached_hash(path) is not None:
                continue
            if expanded:
                self._store_hash(path)
                continue
            stack.append((path, True))
            stack.extend((d, False) for d in self._child_dirs(path))
        result = self._cached_hash(top)
        assert result is not None
        return result

    def _child_dirs(self, path: str) -> list[str]:
        rows = self._db.execute("SELECT path FROM entries WHERE parent = ? AND kind = 'd'", (path,))
        return [r[0] for r in rows]

    def _store_hash(self, path: str) -> None:
        # The records of `_child_record`, made from the columns without an Entry a row (the
        # `name` column is the path's last component): a target spent 20 ms on 10,000 files.
        hasher = xxhash.xxh3_128()
        rows = self._db.execute(
            "SELECT name, kind, hash, size, mode, mtime_ns, path FROM entries "
            "WHERE parent = ? ORDER BY name",
            (path,),
        ).fetchall()
        for name, kind, hash_, size, mode, mtime_ns, child in rows:
            if kind == "d":
                hasher.update(_encode((name, "d", self._cached_hash(child) or b"")))
            elif kind == "l":
                hasher.update(_encode((name, "l", hash_)))
            else:
                hasher.update(_encode((name, "f", hash_, size, mode, mtime_ns)))
        self._db.execute("INSERT OR REPLACE INTO dirhash VALUES (?, ?)", (path, hasher.digest()))

    def dir_listing(self, dir_path: str, *, after: str = "", limit: int = -1) -> DirListing:
        """Return the protocol listing of `dir_path`: direct children, directories with their hash.

        `after` and `limit` page it: only children named after `after`, at most `limit` of them
        (-1: all), read that way from the index (a page of a huge directory costs the page).
        """
        with self._lock:
            if dir_path:
                own = self.get(dir_path)
                if own is None or own.kind != "d":
                    return DirListing(path=dir_path, entries=(), exists=False)
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM entries WHERE parent = ? AND name > ? ORDER BY name LIMIT ?",
                (dir_path, after, limit),
            ).fetchall()
            entries = tuple(
                DirEntry(
                    name=split_path(c.path)[1],
                    kind=c.kind,
                    hash=self.dir_hash(c.path) if c.kind == "d" else c.hash,
                    size=c.size,
                    mtime_ns=c.mtime_ns,
                    mode=c.mode,
                )
                for c in map(_row_to_entry, rows)
            )
        return DirListing(path=dir_path, entries=entries)

    # --- metadata ---

    def get_meta(self, key: str) -> str | None:
        """Return the metadata value stored under `key`, or None."""
        with self._lock:
            row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        """Store a metadata value (for example the journal id and seq this manifest reflects)."""
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()


def _json_chunks(paths: Iterable[str]) -> Iterator[str]:
    """`paths` as JSON arrays of at most JSON_PATHS each, the parameters of json_each statements
    (manifest paths are valid UTF-8: the filter keeps other names out). Bounded, so that a
    parameter stays far below SQLite's length limit (1e9 bytes) whatever a call puts: a target's
    start-up scan of millions of new files is one call."""
    batch = list(paths)
    for start in range(0, len(batch), JSON_PATHS):
        yield json.dumps(batch[start : start + JSON_PATHS], ensure_ascii=False)


def _delete_dirhashes(db: sqlite3.Connection, paths: Iterable[str]) -> None:
    """Drop the cached hashes of the directories `paths` (those that have one)."""
    for chunk in _json_chunks(paths):
        db.execute(_DELETE_DIRHASHES, (chunk,))
