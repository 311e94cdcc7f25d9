"""Reading and recording the job log: watermarks, change rows, exceptions, advances (mixed into Store).

Error handling: an unknown mapping or server raises NotFound, a bad limit ConfigError; database
failures raise StoreError.
"""

from __future__ import annotations

import time
from collections.abc import Mapping as MappingOf
from collections.abc import Sequence
from contextlib import AbstractContextManager

from sqlalchemy.orm import Session

from relaysync.errors import ConfigError
from relaysync.master.store import _heads, _joblog, _mappings, _queries
from relaysync.master.store.types import (
    AdvanceInfo,
    CatchupInfo,
    ChangeLogRow,
    ExceptionInfo,
    TargetStatus,
    WatermarkInfo,
)
from relaysync.protocol.messages import CommitReport

MAX_QUERY_LIMIT = 10_000  # rows one query may return; the API pages beyond that


def _limit(limit: int) -> int:
    if limit < 1 or limit > MAX_QUERY_LIMIT:
        raise ConfigError(f"limit {limit} must be between 1 and {MAX_QUERY_LIMIT}")
    return limit


class JobLogStore:
    """Store methods for the job log (mixed into Store)."""

    def _read(self, operation: str) -> AbstractContextManager[Session]:
        raise NotImplementedError

    def _write(self, operation: str) -> AbstractContextManager[Session]:
        raise NotImplementedError

    def record_commit_reports(self, reports: Sequence[CommitReport]) -> None:
        """Fold a batch of commit reports into the job log, in one transaction; repeats are harmless."""
        if not reports:
            return
        with self._write("record commit reports") as session:
            _joblog.record(session, reports, time.time())

    def record_source_heads(
        self, heads: MappingOf[str, Sequence[_heads.Head]]
    ) -> dict[str, list[int]]:
        """Note the journal heads sources report, per source node (mapping id, seq[, journal
        id]), for the lag figures, in one transaction (a journal other than the one noted voids
        the targets' watermarks of the old one: store/_heads.py); return per source node the
        mapping ids noted (not those of mappings it is not the source of, or that do not
        exist). Checked first in a
        read transaction: heads that are all refused (a former source's, made-up ids) cost no
        write transaction (BEGIN IMMEDIATE on SQLite, contending with the job log's writes).

        Raises:
            StoreError: the store failed.
        """
        with self._read("check source heads") as session:
            if not any(_heads.sourced(session, heads).values()):
                return {node: [] for node in heads}
        with self._write("record source heads") as session:  # checked again: it may have moved
            return _heads.record(session, heads, time.time())

    def watermarks(self, mapping_id: int | str) -> list[WatermarkInfo]:
        """Return the watermark of every (source, target) pair of a mapping.

        Raises:
            NotFound: no such mapping.
        """
        with self._read("watermarks") as session:
            return _queries.watermarks(session, _mappings.find_mapping(session, mapping_id).id)

    def mapping_status(self, mapping_id: int | str) -> list[TargetStatus]:
        """Return, per target of a mapping, its watermark and lag behind the source's highest seq.

        Raises:
            NotFound: no such mapping.
        """
        with self._read("mapping status") as session:
            row = _mappings.find_mapping(session, mapping_id)
            return _queries.mapping_status(session, row, _mappings.infos(session, [row])[0])

    def job_log(
        self,
        *,
        mapping_id: int | str | None = None,
        limit: int = 100,
        before_seq: int | None = None,
        after_tie: tuple[int, str] | tuple[int, str, str] | None = None,
    ) -> list[ChangeLogRow]:
        """Return change rows, newest seq first (then by mapping id, source node and journal
        id), each with how many targets have committed it: those below `before_seq`, and with
        `after_tie` (the mapping id, source node and journal id of the last row of the page
        before) the rest of that seq's.

        A target has committed seq s iff its watermark >= s in the row's journal ("" matches
        any) and it has no open exception for s. The rows of a journal a new one replaced
        (`replaced`) are the old journal's history: no watermark counts in it any more.

        Raises:
            NotFound: no such mapping.
        """
        with self._read("job log") as session:
            mid = None if mapping_id is None else _mappings.find_mapping(session, mapping_id).id
            return _queries.job_log(
                session,
                mapping_id=mid,
                limit=_limit(limit),
                before_seq=before_seq,
                after_tie=after_tie,
            )

    def exceptions(
        self, mapping_id: int | str | None = None, limit: int = 100, *, open_only: bool = False
    ) -> list[ExceptionInfo]:
        """Return failed changes, latest failure first (`open_only`: not yet committed since).

        Raises:
            NotFound: no such mapping.
        """
        with self._read("exceptions") as session:
            mid = None if mapping_id is None else _mappings.find_mapping(session, mapping_id).id
            return _queries.exceptions(
                session, mapping_id=mid, limit=_limit(limit), open_only=open_only
            )

    def advances(
        self, *, mapping_id: int | str | None = None, target: str | None = None, limit: int = 100
    ) -> list[AdvanceInfo]:
        """Return watermark advances, newest first, each with the route its changes came along.

        Raises:
            NotFound: no such mapping or target server.
        """
        with self._read("advances") as session:
            mid = None if mapping_id is None else _mappings.find_mapping(session, mapping_id).id
            node = None if target is None else _mappings.resolve_server(session, target).node_id
            return _queries.advances(session, mapping_id=mid, target_node=node, limit=_limit(limit))

    def catchup(self, mapping_id: int | str) -> list[CatchupInfo]:
        """Return the catch-up counters (work outside the journal) of a mapping, per target.

        Raises:
            NotFound: no such mapping.
        """
        with self._read("catchup") as session:
            return _queries.catchup(session, _mappings.find_mapping(session, mapping_id).id)
