"""What a commit record says a delete removed: optional on the wire both ways (older agents and
older masters), bounded on decode, and kept under the frame cap by the agent's report split."""

from __future__ import annotations

from typing import Annotated

import msgspec
import pytest

from relaysync.agent.master_link import _merge, _runs, make_report
from relaysync.agent.report_queue import Queued
from relaysync.constants import MAX_MESSAGE_BYTES
from relaysync.errors import ProtocolError
from relaysync.protocol.framing import decode_payload, encode_frame
from relaysync.protocol.messages import (
    MAX_REMOVED_BYTES,
    MAX_REMOVED_PATHS,
    MAX_REPORT_RECORDS,
    CommitRecord,
    CommitReport,
)
from relaysync.transfer.removal import removed_bytes


class OldRecord(msgspec.Struct, frozen=True, kw_only=True):
    """A CommitRecord as releases before `kind`/`removed` define it."""

    seq: int
    op: str
    path: str
    new_path: str = ""


class OldReport(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="commit_report"):
    mapping_id: int
    source_node: str
    target_node: str
    watermark: int
    records: tuple[OldRecord, ...]
    route: Annotated[tuple[str, ...], msgspec.Meta(max_length=64)] = ()


def _report(*records: CommitRecord) -> CommitReport:
    return make_report(1, "s", "t", 5, records)


def _merged(reports: list[CommitReport]) -> list[CommitReport]:
    """The reports as the agent's link merges them for the wire (each one outbox frame)."""
    merged = _merge([Queued(r, 1) for r in reports])
    assert sum(q.frames for q in merged) == len(reports)  # every frame is someone's
    return [q.report for q in merged]


def test_an_older_agents_record_decodes_as_unknown_kind() -> None:
    old = OldReport(
        mapping_id=1,
        source_node="s",
        target_node="t",
        watermark=5,
        records=(OldRecord(seq=5, op="delete", path="d"),),
    )
    report = decode_payload(msgspec.msgpack.encode(old))
    assert isinstance(report, CommitReport)
    assert (report.records[0].kind, report.records[0].removed) == ("", ())


def test_an_older_master_ignores_the_new_fields() -> None:
    new = _report(CommitRecord(seq=5, op="delete", path="d", kind="d", removed=("d/a",)))
    old = msgspec.msgpack.decode(encode_frame(new)[4:], type=OldReport)
    assert old.records == (OldRecord(seq=5, op="delete", path="d"),)


def test_more_removed_paths_than_the_bound_or_an_unknown_kind_are_refused_on_decode() -> None:
    over = CommitRecord(seq=1, op="delete", path="d", removed=("d/x",) * (MAX_REMOVED_PATHS + 1))
    with pytest.raises(ProtocolError):
        decode_payload(encode_frame(_report(over))[4:])
    odd = CommitRecord(seq=1, op="delete", path="d", kind="x")  # type: ignore[arg-type]
    with pytest.raises(ProtocolError):
        decode_payload(encode_frame(_report(odd))[4:])


def test_reports_are_split_so_removed_paths_stay_under_the_frame_cap() -> None:
    path = "d/" + "n" * 1000
    per_record = MAX_REMOVED_BYTES // len(path)  # as many as one record may carry
    big = CommitRecord(seq=1, op="delete", path="d", kind="d", removed=(path,) * per_record)
    assert removed_bytes(big) <= MAX_REMOVED_BYTES
    small = CommitRecord(seq=2, op="write", path="a")
    runs = _runs((big, small, big, big, *(small,) * (MAX_REPORT_RECORDS + 1)))
    assert [len(r) for r in runs] == [2, 1, MAX_REPORT_RECORDS, 2]
    for run in runs:
        assert len(encode_frame(_report(*run))) < MAX_MESSAGE_BYTES
    merged = _merged([_report(*run) for run in runs])
    assert all(sum(removed_bytes(r) for r in m.records) <= MAX_REMOVED_BYTES for m in merged)
    assert [r.seq for m in merged for r in m.records] == [r.seq for run in runs for r in run]
    assert _runs(()) == [()]  # a report of the watermark alone still goes


def test_reports_of_long_paths_and_errors_are_split_under_the_frame_cap() -> None:
    """2,000 renames of 1 KB paths encoded to 4.4 MB, over the frame cap: the master ended the
    control session at that frame, and with acknowledgements the agent sent it again at every
    session (review finding). The split weighs what a record encodes to, not only its removals."""
    long = "d/" + "n" * 1000
    renames = tuple(
        CommitRecord(seq=i, op="rename", path=f"{long}{i}", new_path=f"{long}{i}.new")
        for i in range(1, MAX_REPORT_RECORDS + 1)
    )
    failures = tuple(
        CommitRecord(seq=i, op="write", path=f"f{i}", ok=False, error="e" * 1100)
        for i in range(MAX_REPORT_RECORDS + 1, 2 * MAX_REPORT_RECORDS + 1)
    )
    assert len(encode_frame(_report(*renames))) > MAX_MESSAGE_BYTES  # the case unsplit
    runs = _runs(renames + failures)
    assert len(runs) > 2
    merged = _merged([_report(*run) for run in runs])
    for report in [_report(*run) for run in runs] + merged:
        assert len(encode_frame(report)) < MAX_MESSAGE_BYTES
    assert [r.seq for m in merged for r in m.records] == list(range(1, 2 * MAX_REPORT_RECORDS + 1))


def test_merged_reports_keep_their_route_and_routes_never_mix() -> None:
    """The job log shows the route a change took: merging consecutive reports must keep it, and
    reports that came by different routes (a re-plan between them) stay apart."""

    def report(seq: int, route: tuple[str, ...]) -> CommitReport:
        rec = CommitRecord(seq=seq, op="write", path=f"f{seq}")
        return CommitReport(
            mapping_id=1,
            source_node="s",
            target_node="t",
            watermark=seq,
            records=(rec,),
            route=route,
        )

    via_r = ("s", "r", "t")
    merged = _merged([report(1, via_r), report(2, via_r), report(3, ("s", "t")), report(4, via_r)])
    assert [(m.route, [r.seq for r in m.records]) for m in merged] == [
        (via_r, [1, 2]),
        (("s", "t"), [3]),
        (via_r, [4]),
    ]
