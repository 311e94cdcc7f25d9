"""The master's record of the sources that cannot run (master/source_failures.py): each agent's
newest report replaces its list, a report without a mapping's failure ends it, and a deleted
mapping or removed server takes its entries along."""

from __future__ import annotations

from relaysync.master.source_failures import SourceFailures
from relaysync.protocol.messages import SourceFailure


def _f(
    mapping_id: int, error: str = "missing", since: float = 100.0, attempts: int = 1
) -> SourceFailure:
    return SourceFailure(mapping_id=mapping_id, error=error, since=since, attempts=attempts)


def test_a_report_sets_replaces_and_clears_failures() -> None:
    record = SourceFailures()
    changes = record.take("n1", "src", [_f(1), _f(2)], now=5.0)
    assert [r.mapping_id for r in changes.failing] == [1, 2] and changes.ended == []
    got = record.get(1, "n1")
    assert got is not None and (got.error, got.since, got.server, got.reported_at) == (
        "missing",
        100.0,
        "src",
        5.0,
    )
    assert record.get(1, "n2") is None  # another node: not the mapping's source's word

    changes = record.take("n1", "src", [_f(1, attempts=2), _f(2, error="refused")], now=6.0)
    assert [r.mapping_id for r in changes.failing] == [2]  # a new reason; more attempts: quiet
    assert changes.ended == []
    got = record.get(1, "n1")
    assert got is not None and got.attempts == 2 and got.reported_at == 6.0

    changes = record.take("n1", "src", [_f(2, error="refused")], now=7.0)
    assert changes.failing == [] and [r.mapping_id for r in changes.ended] == [1]
    assert record.get(1, "n1") is None

    changes = record.take("n1", "src", [], now=8.0)
    assert [r.mapping_id for r in changes.ended] == [2]
    assert record.get(2, "n1") is None and not record.known("n1", 2)


def test_a_deleted_mapping_or_removed_server_is_forgotten() -> None:
    record = SourceFailures()
    record.take("n1", "a", [_f(1), _f(2)])
    record.take("n2", "b", [_f(3)])
    assert [r.mapping_id for r in record.forget_mapping(1)] == [1]
    assert record.get(1, "n1") is None and record.get(2, "n1") is not None
    assert [r.mapping_id for r in record.forget_node("n2")] == [3]
    assert record.get(3, "n2") is None
    record.forget_mapping(2)
    assert not record.known("n1", 2) and record.forget_node("n1") == []
