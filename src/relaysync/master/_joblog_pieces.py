"""A job-log batch that fails for what it holds, written in ever smaller pieces (a mixin of
JobLogWriter, master/joblog.py): halves, down to single reports, then single records, so that a
record the store refuses for what it holds is dropped alone, with an error naming it, and every
other agent's commits are written."""

from __future__ import annotations

import logging
from collections.abc import Sequence

from relaysync.errors import StoreError
from relaysync.master._joblog_parts import halves, log_failure
from relaysync.master.report_acks import Receipts
from relaysync.master.store import store_unavailable
from relaysync.protocol.messages import CommitReport

logger = logging.getLogger("relaysync.master.joblog")  # the writer's words, one logger


class WritingInPieces:
    """JobLogWriter sets the state and writes (`_write`), puts back (`_requeue`)."""

    dropped_records: int
    _receipts: Receipts

    async def _write(self, reports: list[CommitReport]) -> None:
        raise NotImplementedError

    def _requeue(self, reports: Sequence[CommitReport]) -> None:
        raise NotImplementedError

    async def _write_in_pieces(
        self, batch: list[CommitReport], exc: Exception
    ) -> list[CommitReport]:
        """Write a batch that failed (with `exc`, not the store's being down) in ever smaller
        pieces, dropping each record that fails alone; returns what is left when the store
        itself fails meanwhile. An unexpected error's traceback is logged once per distinct
        error, not once per piece or record it fails."""
        traced: set[str] = set()
        logger.warning(
            "job log batch of %s reports failed, writing it in pieces: %s",
            len(batch),
            exc if isinstance(exc, StoreError) else repr(exc),
            exc_info=_first_time(exc, traced),
        )
        pending: list[list[CommitReport]] = []  # a stack, the first piece on top: order is kept
        self._split_or_drop(batch, exc, pending, traced)
        while pending:
            piece = pending.pop()
            try:
                await self._write(piece)
            except Exception as failure:
                if store_unavailable(failure):
                    log_failure(failure, "job log write failed, will retry: %s")
                    return [r for p in (piece, *reversed(pending)) for r in p]
                self._split_or_drop(piece, failure, pending, traced)
            except BaseException:  # cancelled: what is left stays queued for the stop
                self._requeue([r for p in (piece, *reversed(pending)) for r in p])
                raise
        return []

    def _split_or_drop(
        self,
        piece: list[CommitReport],
        exc: Exception,
        pending: list[list[CommitReport]],
        traced: set[str],
    ) -> None:
        split = halves(piece)
        if split is None:
            self._drop(piece[0], exc, traced)
            return
        if len(piece) == 1:  # a report's records in two: taken with its last half
            self._receipts.move(piece[0], split[1][0])
        pending.extend(reversed(split))

    def _drop(self, report: CommitReport, exc: Exception, traced: set[str]) -> None:
        """Give up on a report of at most one record: the store refuses what it holds."""
        self.dropped_records += len(report.records)
        self._receipts.taken([report])  # sent again, it would be refused again
        rec = report.records[0] if report.records else None
        logger.error(
            "job log: dropped a commit record the store refuses: mapping %s, source %s, "
            "target %s, seq %s, path %r, watermark %s: %s",
            report.mapping_id,
            report.source_node[:16],
            report.target_node[:16],
            rec.seq if rec else "-",
            rec.path if rec else "",
            report.watermark,
            exc if isinstance(exc, StoreError) else repr(exc),
            exc_info=_first_time(exc, traced),
        )


def _first_time(exc: Exception, traced: set[str]) -> bool:
    """Whether to log `exc`'s traceback: an unexpected error (a bug, not a StoreError) not
    logged with one yet in `traced` (what a batch in pieces met so far)."""
    if isinstance(exc, StoreError) or repr(exc) in traced:
        return False
    traced.add(repr(exc))
    return True
