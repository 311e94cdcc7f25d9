"""The journal heads a source sends with its figures (`MetricsReport.journal_heads`): optional on
the wire both ways (older agents send none, older masters ignore them), and bounded on decode."""

from __future__ import annotations

import time

import msgspec
import pytest

from relaysync.errors import ProtocolError
from relaysync.protocol.framing import decode_payload, encode_frame
from relaysync.protocol.messages import (
    MAX_JOURNAL_HEADS,
    JournalHead,
    MetricSample,
    MetricsReport,
)


class OldFigures(msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="metrics_report"):
    """A MetricsReport as releases before `journal_heads` define it."""

    at: float
    samples: tuple[MetricSample, ...]


def _figures(*heads: tuple[int, int]) -> MetricsReport:
    return MetricsReport(
        at=time.time(),
        samples=(MetricSample(name="load1", value=0.5),),
        journal_heads=tuple(JournalHead(mapping_id=m, seq=s) for m, s in heads),
    )


def test_heads_cross_the_wire() -> None:
    report = decode_payload(encode_frame(_figures((3, 70), (9, 0)))[4:])
    assert isinstance(report, MetricsReport)
    assert report.journal_heads == (
        JournalHead(mapping_id=3, seq=70),
        JournalHead(mapping_id=9, seq=0),
    )


def test_an_older_agents_figures_decode_with_no_heads() -> None:
    old = OldFigures(at=time.time(), samples=(MetricSample(name="load1", value=0.5),))
    report = decode_payload(msgspec.msgpack.encode(old))
    assert isinstance(report, MetricsReport) and report.journal_heads == ()


def test_an_older_master_ignores_the_heads() -> None:
    new = _figures((3, 70))
    old = msgspec.msgpack.decode(encode_frame(new)[4:], type=OldFigures)
    assert old.samples == new.samples


def test_more_heads_than_the_bound_or_a_negative_seq_are_refused_on_decode() -> None:
    over = _figures(*((m, 1) for m in range(MAX_JOURNAL_HEADS + 1)))
    with pytest.raises(ProtocolError):
        decode_payload(encode_frame(over)[4:])
    with pytest.raises(ProtocolError):
        decode_payload(encode_frame(_figures((3, -1)))[4:])


class OldHead(msgspec.Struct, frozen=True, kw_only=True, array_like=True):
    """A JournalHead as releases before `journal_id` define it."""

    mapping_id: int
    seq: int


class OldHeadFigures(
    msgspec.Struct, frozen=True, kw_only=True, tag_field="type", tag="metrics_report"
):
    at: float
    samples: tuple[MetricSample, ...]
    journal_heads: tuple[OldHead, ...] = ()


def test_a_head_names_its_journal_and_stays_readable_both_ways() -> None:
    """The journal a head counts in crosses the wire; an older master reads the longer head
    (the element past its fields ignored), and an older agent's head has none named ("")."""
    new = MetricsReport(
        at=time.time(),
        samples=(),
        journal_heads=(JournalHead(mapping_id=3, seq=70, journal_id="ab" * 16),),
    )
    decoded = decode_payload(encode_frame(new)[4:])
    assert isinstance(decoded, MetricsReport) and decoded.journal_heads == new.journal_heads
    old = msgspec.msgpack.decode(encode_frame(new)[4:], type=OldHeadFigures)
    assert old.journal_heads == (OldHead(mapping_id=3, seq=70),)
    older = OldHeadFigures(
        at=time.time(), samples=(), journal_heads=(OldHead(mapping_id=3, seq=70),)
    )
    report = decode_payload(msgspec.msgpack.encode(older))
    assert isinstance(report, MetricsReport)
    assert report.journal_heads == (JournalHead(mapping_id=3, seq=70, journal_id=""),)
