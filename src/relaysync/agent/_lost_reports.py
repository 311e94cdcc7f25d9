"""Lost commit reports: what the report queue's bounds dropped, told to the master as markers.

A report dropped past a bound (agent/report_queue.py) never reaches the master: its records miss
in the job log, and the caches of the mapping's sites kept the old version of what they name
(the purge step waits on the reports). So the queue notes each dropped report's (mapping,
source, target, route, journal) and its watermark (`LostReports.note`), in a file beside the
outbox's segments (`lost`: the notes outlive a kill of the agent), and once the master takes
reports again it queues one marker for each (`marker`): a report of one record of op "lost" at
the mapping's root, seq 0 (of no journal, at watermark 0: it moves no watermark), which the
master's purger takes for a change of anything in the mapping and purges each of its sites whole (purge/planner.py; an older master records it in the
job log and purges nothing, as before). Notes are kept, not markers queued, while the master is
away: a marker per drop would fill the queue with markers at its bound.

Error handling: a `lost` file that cannot be written is logged (a kill then loses the notes of
this run; the drops are counted all the same); an unreadable one is ignored, with a warning.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import msgspec

from relaysync.protocol.messages import LOST_OP, CommitRecord, CommitReport

logger = logging.getLogger(__name__)

LostKey = tuple[int, str, str, tuple[str, ...], str]  # mapping, source, target, route, journal


class ReportHead(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="commit_report"):
    """What a dropped report's marker needs of it, decoded without its records."""

    mapping_id: int
    source_node: str
    target_node: str
    watermark: int
    route: tuple[str, ...] = ()
    journal_id: str = ""


HEAD_DECODER = msgspec.msgpack.Decoder(ReportHead)
_NOTES = msgspec.msgpack.Decoder(list[tuple[int, str, str, tuple[str, ...], str, int]])


def marker(key: LostKey) -> CommitReport:
    """The report that tells the master reports of `key` were dropped. It names no journal and
    a watermark of 0: it comes after newer reports, maybe of a journal recreated since the drop,
    and an old journal's id there was taken for a switch back to it (the target's watermark set
    to the old journal's seq, until the source's head voided it to 0), or dropped as a retired
    journal's in the job log; "" matches any journal and 0 raises no watermark
    (master/store/_journals.py). The purger takes seq 0 at once, whatever the journal."""
    mapping_id, source, target, route, _ = key
    record = CommitRecord(seq=0, op=LOST_OP, path="", committed_at=time.time())
    return CommitReport(
        mapping_id=mapping_id,
        source_node=source,
        target_node=target,
        watermark=0,
        records=(record,),
        route=route,
    )


class LostReports:
    """The notes of dropped reports not told to the master yet, kept in `path` (None: memory)."""

    def __init__(self, path: Path | None) -> None:
        self.path = path
        self.notes: dict[LostKey, int] = {}
        # Dropped after they were sent, by the number of their message in the session: the
        # master may take that message yet (`withdraw`), or the session ends first (`confirm`).
        # Saved with the notes: a restart takes them for notes (a marker rather than a loss).
        self.pending: dict[int, dict[LostKey, int]] = {}
        self._on_disk: set[LostKey] = set()  # the keys `path` holds (its watermarks may lag)
        if path is None:
            return
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            return
        except OSError as exc:
            logger.warning("report outbox: cannot read %s (%s); ignored", path, exc)
            return
        try:
            self.notes = {(m, s, t, r, j): w for m, s, t, r, j, w in _NOTES.decode(raw)}
        except msgspec.DecodeError:
            logger.warning("report outbox: %s is unreadable; ignored", path)
        self._on_disk = set(self.notes)

    def note(self, report: CommitReport | ReportHead, *, sent_in: int = 0) -> None:
        """`report` was dropped; `sent_in`: after it was sent, in this session's message of that
        number (a note only if the session ends before the master takes it)."""
        key = (
            report.mapping_id,
            report.source_node,
            report.target_node,
            tuple(report.route),
            report.journal_id,
        )
        notes = self.pending.setdefault(sent_in, {}) if sent_in else self.notes
        notes[key] = max(notes.get(key, 0), report.watermark)

    def withdraw(self, upto: int) -> None:
        """The master took this session's first `upto` messages: the reports dropped from them
        after they were sent reached it."""
        for number in [n for n in self.pending if n <= upto]:
            del self.pending[number]

    def confirm(self) -> None:
        """The session ended: the reports dropped after they were sent, in messages the master
        did not say it took, are noted (it may have taken them: a marker rather than a loss)."""
        for notes in self.pending.values():
            for key, watermark in notes.items():
                self.notes[key] = max(self.notes.get(key, 0), watermark)
        self.pending.clear()

    def take(self) -> list[CommitReport]:
        """The markers of the notes, which are forgotten (the caller queues the markers)."""
        out = list({key[:4]: marker(key) for key in self.notes}.values())  # one a key[:4]
        self.notes.clear()
        return out

    def save(self) -> None:
        """Make the notes durable in `path` if their keys changed (a marker names no watermark:
        a note of a key saved already needs no write), before the caller forgets the reports
        on disk: written to `lost.tmp`, synced, renamed over `path`, and the directory synced,
        so that no kill of the agent nor power loss keeps the drop and loses its note; removed
        when none (a removal lost to a crash only tells the master again)."""
        rows = dict(self.notes)
        for notes in self.pending.values():
            rows.update({key: max(rows.get(key, 0), w) for key, w in notes.items()})
        keys = set(rows)
        if keys == self._on_disk or self.path is None:
            return
        try:
            if not keys:
                self.path.unlink(missing_ok=True)
            else:
                encoded = msgspec.msgpack.encode([(*key, w) for key, w in rows.items()])
                _write_durably(self.path, encoded)
        except OSError as exc:
            logger.error(
                "report outbox: cannot save the notes of dropped reports to %s (%s); a kill "
                "of the agent now loses them (their mappings' caches are not purged whole)",
                self.path,
                exc,
            )
            return
        self._on_disk = keys


def _write_durably(path: Path, data: bytes) -> None:
    """Replace `path` by `data`: a synced temporary renamed over it, then the directory synced
    (as the outbox syncs its segments and their names: agent/outbox.py `sync_handles`)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fdatasync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
