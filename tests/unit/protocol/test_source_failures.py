"""The failing sources an agent sends with its figures (`MetricsReport.source_failures`):
optional on the wire both ways (older agents send none, older masters ignore them), and
bounded on decode."""

from __future__ import annotations

import time

import msgspec
import pytest

from relaysync.errors import ProtocolError
from relaysync.protocol.framing import decode_payload, encode_frame
from relaysync.protocol.messages import (
    MAX_SOURCE_ERROR,
    MAX_SOURCE_FAILURES,
    JournalHead,
    MetricSample,
    MetricsReport,
    SourceFailure,
    failure_reason,
)


class OldFigures(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="metrics_report"):
    """A MetricsReport as releases before `source_failures` define it."""

    at: float
    samples: tuple[MetricSample, ...]
    journal_heads: tuple[JournalHead, ...] = ()


def _failure(mapping_id: int, error: str = "FileNotFoundError: /srv/site") -> SourceFailure:
    return SourceFailure(mapping_id=mapping_id, error=error, since=time.time(), attempts=3)


def _figures(*failures: SourceFailure) -> MetricsReport:
    return MetricsReport(
        at=time.time(),
        samples=(MetricSample(name="load1", value=0.5),),
        journal_heads=(JournalHead(mapping_id=3, seq=70),),
        source_failures=failures,
    )


def test_failures_cross_the_wire() -> None:
    sent = _figures(_failure(3), _failure(9, "x" * MAX_SOURCE_ERROR))
    report = decode_payload(encode_frame(sent)[4:])
    assert isinstance(report, MetricsReport)
    assert report.source_failures == sent.source_failures


def test_an_older_agents_figures_decode_with_no_failures() -> None:
    old = OldFigures(at=time.time(), samples=(MetricSample(name="load1", value=0.5),))
    report = decode_payload(msgspec.msgpack.encode(old))
    assert isinstance(report, MetricsReport) and report.source_failures == ()


def test_an_older_master_ignores_the_failures() -> None:
    new = _figures(_failure(3))
    old = msgspec.msgpack.decode(encode_frame(new)[4:], type=OldFigures)
    assert old.samples == new.samples and old.journal_heads == new.journal_heads


def test_none_failing_keeps_the_bytes_of_before() -> None:
    report = _figures()
    old = OldFigures(at=report.at, samples=report.samples, journal_heads=report.journal_heads)
    assert encode_frame(report)[4:] == msgspec.msgpack.encode(old)


@pytest.mark.parametrize(
    "failures",
    [
        tuple(_failure(m) for m in range(MAX_SOURCE_FAILURES + 1)),  # over the bound
        (_failure(3, "x" * (MAX_SOURCE_ERROR + 1)),),  # a reason too long
        (_failure(3), _failure(3)),  # one mapping twice
        (_failure(-1),),
    ],
    ids=["too-many", "too-long", "twice", "negative-id"],
)
def test_malformed_failures_are_refused_on_decode(failures: tuple[SourceFailure, ...]) -> None:
    with pytest.raises(ProtocolError):
        decode_payload(encode_frame(_figures(*failures))[4:])


def test_a_reason_with_a_paths_undecodable_bytes_or_escapes_still_encodes() -> None:
    """A folder refused by its real path, with a name of non-UTF-8 bytes: the lone surrogate
    made the whole report unencodable, and the control link failed at every report."""
    path = b"/srv/\xffsite".decode("utf-8", "surrogateescape")
    reason = failure_reason(f"FolderRefused: {path} is outside allowed_roots\x1b[2J\nnext")
    assert reason == "FolderRefused: /srv/\\xffsite is outside allowed_roots [2J next"
    failure = SourceFailure(mapping_id=1, error=reason, since=time.time())
    report = MetricsReport(at=time.time(), samples=(), source_failures=(failure,))
    assert decode_payload(encode_frame(report)[4:]) == report
    assert failure_reason("a\u2028b\x85c\x9b[31m\td") == "a b c [31m d"  # C1, separators
