"""Failures a later commit of their path makes moot.

A job-log exception is resolved by the commit of its own change, (seq, path). A file rewritten
after a failed write, or whose retry an agent restart forgot, is sent again under another seq
(or as a comparison's catch-up work, seq 0): the target then holds the path as the source has
it, but the failure stayed open for good (the console, `/api/exceptions?open=true`,
`relaysync log --failed`).

So a failure of path P is also resolved by a commit on the same target, of the same mapping and
source, reported after it and of a later seq (or either of them seq 0, which has no order of
its own), that leaves P as the source has it (`MOOTS`):
- a write or a symlink of P: any failure of P (its content, kind, mode and mtime are set);
- a journal delete of P (of a later seq; a comparison's delete, seq 0, is the first half of
  replacing P by another kind, whose second half may still fail): any failure of P;
- a mkdir of P: a failed write, symlink or mkdir (it keeps what an existing directory holds,
  and sets no mtime: not a failed delete, erase or attr);
- an erase of P (it removes what the source lacks below P, nothing of P itself): a failed erase;
- an attr of P: a failed attr.
A journal delete of a directory D removes the whole tree: the target then holds what the
source has below D (nothing), so under the same conditions (a later seq than the failure, or
a seq-0 failure reported before it) it also resolves what it resolves of D itself (any failure
but a rename's) of each path below D: "D/x", "D/sub/x", not "D2/x". A delete's path is never
the root "" (wire paths are normalised, and `Delete` refuses ""), so none covers every path.
Not resolved so: a failed rename (what its new path holds is another matter), a failure of
another source node, rows written before this rule (no op: migration 0021), a commit an N:M
job's conflict rule did not apply (its `conflict` says the target kept its own version), and a
commit that came through a relay (or from an agent that does not say its route): a relay's
comparison sends its own copy of a path, which is the source's only if the relay applied the
path's last change. A resent report may close a failure that a later report of the same agent
opens again (the upsert), until that one lands.

A change whose failure was made moot counts as committed on that target in the job log
(`committed_count`: no open exception), as the path is what the source has.

Cost: only the triples (mapping, source, target) with exceptions open before the batch, or
failed in it, note their commits; their open exceptions are looked up by path
(`ix_exceptions_path`), CHUNK paths a query. The path key is a hash, so the paths below a
delete are found otherwise: a triple with journal deletes in the batch scans its open
exceptions of a seq below the batch's highest delete (`ux_exceptions_key`) in the database,
which returns those in at most RANGES ranges of paths around the deleted ones (exactly the
paths below them when they are that few), FETCH_ROWS at a time; each one's parent
directories are then looked up among the deleted paths (a dict). So a batch that deletes
anything costs one scan of its triple's open failures: with 8,000 open on one target and
batches of 256 commits, about 4 ms a batch on SQLite (8 deletes of directories; 8 ms on
PostgreSQL), 13 ms (17) when 64 deletes all over the tree make the ranges read nearly all.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import TypeVar

from sqlalchemy import ColumnElement, Table, and_, or_, select, update
from sqlalchemy.orm import Session

from .models import Base, path_key

EXCEPTIONS: Table = Base.metadata.tables["exceptions"]

_ANY = frozenset({"write", "symlink", "mkdir", "delete", "erase", "attr"})
MOOTS: dict[str, frozenset[str]] = {  # a commit's op -> the failed ops of its path it moots
    "write": _ANY,
    "symlink": _ANY,
    "delete": _ANY,  # of a later seq only (moots)
    "mkdir": frozenset({"write", "symlink", "mkdir"}),
    "erase": frozenset({"erase"}),
    "attr": frozenset({"attr"}),
}
# a refused message is recorded under its message's name (receiver.py _refuse_message)
_AS_OP = {"filestart": "write", "smallfile": "write", "deltastart": "write", "makedir": "mkdir"}
_AS_OP |= {"setattr": "attr"}
APPLIED = ("", "newer")  # N:M conflicts whose commit set the path as this source has it
CHUNK = 500  # paths per lookup
FETCH_ROWS = 5_000  # open exceptions read per round trip while looking below deleted paths
RANGES = 8  # ranges of paths (in code point order) that a lookup below deleted paths reads

T = TypeVar("T")
Triple = tuple[int, str, str]  # (mapping, source node, target node)


@dataclass(frozen=True, slots=True)
class Commit:
    """A commit that may make failures of its path moot: its op, seq and place in the batch."""

    op: str
    seq: int
    order: int


def moots(failed_op: str | None, failed_seq: int, failed_order: int, commit: Commit) -> bool:
    """Whether `commit` of the same path makes a failure of it moot. `failed_order` is the
    failure's place in the batch (-1: an earlier batch)."""
    if failed_op is None or commit.order <= failed_order:
        return False
    if commit.op == "delete":  # a journal delete; a comparison's may be half of a replace
        later = commit.seq > 0 and (failed_seq == 0 or commit.seq > failed_seq)
    else:
        later = commit.seq == 0 or failed_seq == 0 or commit.seq > failed_seq
    return later and _AS_OP.get(failed_op, failed_op) in MOOTS.get(commit.op, frozenset())


@dataclass
class Commits:
    """The commits of one batch that may make failures moot, and where its failures fell."""

    by_path: dict[tuple[Triple, str], list[Commit]] = field(default_factory=dict)
    # per triple, the journal deletes (seq > 0) by path: they also moot failures below the path
    deleted: dict[Triple, dict[str, list[Commit]]] = field(default_factory=dict)
    failed_at: dict[tuple[Triple, int, str], int] = field(default_factory=dict)  # its last place
    order: int = 0

    def next_order(self) -> int:
        self.order += 1
        return self.order

    def committed(
        self, triple: Triple, path: str, op: str, seq: int, order: int, conflict: str = ""
    ) -> None:
        if op in MOOTS and conflict in APPLIED:
            commit = Commit(op, seq, order)
            self.by_path.setdefault((triple, path), []).append(commit)
            if op == "delete" and seq > 0:
                self.deleted.setdefault(triple, {}).setdefault(path, []).append(commit)

    def failed(self, triple: Triple, seq: int, path: str, order: int) -> None:
        self.failed_at[(triple, seq, path)] = order


def resolve_moot(session: Session, commits: Commits, now: float) -> int:
    """Resolve the open exceptions that the batch's commits make moot; return how many (the
    job log writer's debug log says it)."""
    paths: dict[Triple, dict[str, str]] = {}  # per triple: path key -> path
    for triple, path in commits.by_path:
        paths.setdefault(triple, {})[path_key(path)] = path
    moot: set[int] = set()
    for triple, keyed in sorted(paths.items()):
        for keys in _chunks(sorted(keyed), CHUNK):
            moot.update(_moot_ids(session, commits, triple, {k: keyed[k] for k in keys}))
    for triple, deleted in sorted(commits.deleted.items()):
        moot.update(_below_deleted(session, commits, triple, deleted))
    for ids in _chunks(sorted(moot), CHUNK):
        session.execute(
            update(EXCEPTIONS)
            .where(EXCEPTIONS.c.id.in_(ids), EXCEPTIONS.c.resolved_at.is_(None))
            .values(resolved_at=now)
        )
    return len(moot)


def _moot_ids(
    session: Session, commits: Commits, triple: Triple, keyed: dict[str, str]
) -> list[int]:
    c = EXCEPTIONS.c
    rows = session.execute(
        select(c.id, c.seq, c.path_key, c.op).where(
            c.mapping_id == triple[0],
            c.source_node == triple[1],
            c.target_node == triple[2],
            c.path_key.in_(keyed),
            c.resolved_at.is_(None),
        )
    )
    out: list[int] = []
    for row_id, seq, key, op in rows:
        path = keyed[key]
        failed_order = commits.failed_at.get((triple, seq, path), -1)
        if any(moots(op, seq, failed_order, commit) for commit in commits.by_path[(triple, path)]):
            out.append(row_id)
    return out


def _below_deleted(
    session: Session, commits: Commits, triple: Triple, deleted: dict[str, list[Commit]]
) -> list[int]:
    """The open exceptions of paths below a deleted path that its delete makes moot."""
    highest = max(commit.seq for of_path in deleted.values() for commit in of_path)
    tops = sorted(path for path in deleted if not any(p in deleted for p in _parents(path)))
    c = EXCEPTIONS.c
    query = select(c.id, c.seq, c.path, c.op).where(
        c.mapping_id == triple[0],
        c.source_node == triple[1],
        c.target_node == triple[2],
        c.seq < highest,  # a delete moots a failure of an earlier seq or of seq 0 (moots)
        c.resolved_at.is_(None),
        _in_ranges(session, tops),
    )
    below = tuple(f"{path}/" for path in tops)  # str.startswith: a C loop over them
    out: list[int] = []
    for row_id, seq, path, op in session.execute(query.execution_options(yield_per=FETCH_ROWS)):
        if not path.startswith(below):
            continue
        failed_order = commits.failed_at.get((triple, seq, path), -1)
        for parent in _parents(path):
            if any(moots(op, seq, failed_order, commit) for commit in deleted.get(parent, ())):
                out.append(row_id)
                break
    return out


def _in_ranges(session: Session, tops: list[str]) -> ColumnElement[bool]:
    """Whether a row's path may be below one of `tops` (sorted, none below another): in one of
    at most RANGES ranges, each from the first of a run of them to the last. A run of one,
    [top + "/", top + "0"), holds exactly the paths below it ("0" follows "/")."""
    path: ColumnElement[str] = EXCEPTIONS.c.path
    if session.get_bind().dialect.name == "postgresql":
        path = path.collate("C")  # code point order, as Python's (SQLite's is already)
    runs = _chunks(tops, -(-len(tops) // RANGES))
    return or_(*(and_(path >= f"{run[0]}/", path < f"{run[-1]}0") for run in runs))


def _parents(path: str) -> Iterator[str]:
    """The directories above a relative path, the root "" left out ("a/b/c": "a", "a/b")."""
    end = path.find("/")
    while end > 0:
        yield path[:end]
        end = path.find("/", end + 1)


def _chunks(items: list[T], size: int) -> Iterable[list[T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]
