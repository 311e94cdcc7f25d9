"""The master's control server given values no agent makes: integers over 2**63 - 1 (which
msgpack carries and a SQL BIGINT does not), strings longer than the column they go to: the
frame is malformed, the link ends, nothing is stored, and other agents' reports still are."""

from __future__ import annotations

import logging

import anyio
import pytest
from tests._fleet import TIMEOUT_S, Fleet, agent_link, roundtrip

from relaysync.protocol.framing import FramedStream
from relaysync.protocol.messages import (
    CommitRecord,
    CommitReport,
    MetricSample,
    MetricsReport,
    Ping,
    Pong,
    Register,
    ReleaseReport,
)

OVER_INT64 = 2**63


def _mapping(fleet: Fleet, source: str, target: str, name: str = "docs") -> int:
    resp = fleet.client.post(
        "/api/mappings",
        json={
            "name": name,
            "source": source,
            "source_path": "/srv/docs",
            "targets": [{"server": target, "path": "/srv/docs"}],
        },
    )
    assert resp.status_code == 201, resp.text
    return int(resp.json()["id"])


async def _ends_without_answering(framed: FramedStream) -> None:
    """The master closes the link after a bad frame: a Ping sent after it gets no Pong."""
    with anyio.fail_after(TIMEOUT_S):
        with pytest.raises((anyio.EndOfStream, anyio.BrokenResourceError)):
            await framed.send(Ping(nonce=1))
            while True:
                message = await framed.receive()
                assert not isinstance(message, Pong), "the master took the bad frame"


def _no_unexpected_failure(caplog: pytest.LogCaptureFixture) -> None:
    assert not [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.parametrize("field", ["seq", "size", "watermark"])
def test_a_commit_report_over_int64_never_reaches_the_job_log(
    fleet: Fleet, field: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Was: the report was queued, and the job log's next flush raised OverflowError (SQLite),
    which ended the writer's task and the master with it, or (PostgreSQL) failed every flush
    after it: the batch is put back in front, so no agent's commits were written again."""
    src, a = fleet.join("src"), fleet.join("web-a")
    m = _mapping(fleet, "src", "web-a")
    record = CommitRecord(
        seq=OVER_INT64 if field == "seq" else 1,
        op="write",
        path="index.html",
        size=OVER_INT64 if field == "size" else 0,
    )
    bad = CommitReport(
        mapping_id=m,
        source_node=src.node_id,
        target_node=a.node_id,
        watermark=OVER_INT64 if field == "watermark" else 1,
        records=(record,),
    )
    good = CommitReport(
        mapping_id=m,
        source_node=src.node_id,
        target_node=a.node_id,
        watermark=3,
        records=(CommitRecord(seq=3, op="write", path="index.html"),),
    )

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            async with agent_link(port, a, "web-a") as framed:
                await framed.send(bad)
                await _ends_without_answering(framed)
            async with agent_link(port, a, "web-a") as framed:  # it reconnects
                await framed.send(good)
                await roundtrip(framed)
            await control.joblog.flush()
            assert not control.joblog._queue  # written, nothing left to retry for ever
            assert control.joblog.watermarks == {(m, src.node_id, a.node_id): 3}

    anyio.run(main)
    assert [(r.seq, r.size) for r in fleet.store.job_log(mapping_id=m)] == [(3, 0)]
    _no_unexpected_failure(caplog)


def test_a_release_report_over_int64_is_a_malformed_message(
    fleet: Fleet, caplog: pytest.LogCaptureFixture
) -> None:
    """Was: the store raised OverflowError in the handler (SQLite) and the link ended with a
    traceback as an unexpected failure, or (PostgreSQL) the update failed as a store error."""
    src, _ = fleet.join("src"), fleet.join("web-a")
    m = _mapping(fleet, "src", "web-a")
    fleet.store.modes.set_mode(m, "manual")
    fleet.store.modes.release(m)

    async def main() -> None:
        async with fleet.control_server() as (_, port):
            async with agent_link(port, src, "src") as framed:
                await framed.send(ReleaseReport(mapping_id=m, release=1, upto_seq=OVER_INT64))
                await _ends_without_answering(framed)
            async with agent_link(port, src, "src") as framed:
                await framed.send(ReleaseReport(mapping_id=m, release=1, upto_seq=7))
                await roundtrip(framed)

    anyio.run(main)
    assert fleet.store.modes.get(m).released_upto == 7
    _no_unexpected_failure(caplog)


LONG_STRINGS = {  # a field of a commit report, and a value longer than its column or its kind
    "op": {"op": "x" * 40},  # changes.op is VARCHAR(32)
    "conflict": {"conflict": "x" * 17},  # nm_conflicts.reason is VARCHAR(16)
    "conflict_with": {"conflict_with": "c" * 65},  # nm_conflicts.winner_node: a node id
    "route": {"route": ("r" * 256,)},  # a server name (OpenMapping.route's bound)
}


@pytest.mark.parametrize("field", sorted(LONG_STRINGS))
def test_a_commit_report_string_too_long_for_its_column_is_refused(
    fleet: Fleet, field: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Was: a 40-character op was queued and, on PostgreSQL, every job log flush failed
    (value too long for VARCHAR(32)) with the batch put back in front: no agent's commits
    were written again. Now the frame is malformed: its link ends, another agent's report lands."""
    src, a, b = fleet.join("src"), fleet.join("web-a"), fleet.join("web-b")
    ma = _mapping(fleet, "src", "web-a", "docs-a")
    mb = _mapping(fleet, "src", "web-b", "docs-b")
    bad_value = LONG_STRINGS[field]
    record_fields = {k: v for k, v in bad_value.items() if k != "route"}
    bad = CommitReport(
        mapping_id=ma,
        source_node=src.node_id,
        target_node=a.node_id,
        watermark=1,
        records=(CommitRecord(**{"seq": 1, "op": "write", "path": "a.html", **record_fields}),),
        route=bad_value.get("route", ()),
    )
    good = CommitReport(
        mapping_id=mb,
        source_node=src.node_id,
        target_node=b.node_id,
        watermark=2,
        records=(CommitRecord(seq=2, op="write", path="b.html"),),
    )

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            async with agent_link(port, a, "web-a") as framed:
                await framed.send(bad)
                await _ends_without_answering(framed)
            async with agent_link(port, b, "web-b") as framed:
                await framed.send(good)
                await roundtrip(framed)
            await control.joblog.flush()
            assert not control.joblog._queue  # written, nothing left to retry for ever

    anyio.run(main)
    assert fleet.store.job_log(mapping_id=ma) == []
    assert [(r.seq, r.op) for r in fleet.store.job_log(mapping_id=mb)] == [(2, "write")]
    _no_unexpected_failure(caplog)


@pytest.mark.parametrize("field", ["name", "region", "group", "peer_address"])
def test_a_register_string_too_long_for_its_column_is_refused(
    fleet: Fleet, field: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Was: a 256-character region was stored as it was (SQLite) or failed the registration
    with a store error logged as an unexpected failure (PostgreSQL: VARCHAR(255))."""
    a = fleet.join("web-a")
    fields = {"name": "web-a", "region": "", "group": "", "peer_address": "127.0.0.1:9"}

    async def main() -> None:
        async with fleet.control_server() as (_, port):
            register = Register(**{**fields, field: "x" * 256})
            async with agent_link(port, a, "web-a", register) as framed:
                await _ends_without_answering(framed)

    anyio.run(main)
    (server,) = fleet.store.list_servers()
    assert (server.region, server.group, server.address) == ("", "", "")
    assert not [r for r in caplog.records if r.getMessage() == "store operation failed"]
    _no_unexpected_failure(caplog)


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("committed_at", NAN),
        ("committed_at", INF),
        ("changed_at", NAN),
        ("changed_at", -1.0),
        ("duration_ms", INF),
        ("duration_ms", -5.0),
    ],
)
def test_a_commit_report_time_no_agent_makes_is_refused(
    fleet: Fleet, field: str, value: float, caplog: pytest.LogCaptureFixture
) -> None:
    """Was: NaN and the infinities were stored as they came, into the change rows (a NaN
    changed_at is never old enough for retention) and the advances' latency and transfer
    times, which every percentile of GET /api/stats is computed from."""
    src, a = fleet.join("src"), fleet.join("web-a")
    m = _mapping(fleet, "src", "web-a")
    record = CommitRecord(
        **{"seq": 1, "op": "write", "path": "a.html", "changed_at": 1.0, field: value}
    )
    bad = CommitReport(
        mapping_id=m,
        source_node=src.node_id,
        target_node=a.node_id,
        watermark=1,
        records=(record,),
    )

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            async with agent_link(port, a, "web-a") as framed:
                await framed.send(bad)
                await _ends_without_answering(framed)
            await control.joblog.flush()

    anyio.run(main)
    assert fleet.store.job_log(mapping_id=m) == []
    assert fleet.store.advances(mapping_id=m) == []
    _no_unexpected_failure(caplog)


@pytest.mark.parametrize("at", [NAN, INF, -1.0])
def test_a_metrics_report_time_no_agent_makes_is_refused(
    fleet: Fleet, at: float, caplog: pytest.LogCaptureFixture
) -> None:
    """Was: stored as the samples' time; a NaN one is never old enough to be folded or pruned."""
    a = fleet.join("web-a")
    got: list[MetricsReport] = []
    sample = MetricSample(name="cpu_percent", value=1.0)

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            control.on_metrics = lambda node_id, name, report: got.append(report)
            async with agent_link(port, a, "web-a") as framed:
                await framed.send(MetricsReport(at=at, samples=(sample,)))
                await _ends_without_answering(framed)

    anyio.run(main)
    assert got == []
    _no_unexpected_failure(caplog)


@pytest.mark.parametrize("address", ["0.0.0.0:8471", "127.0.0.1:http", "a b:1", "::1:8471"])
def test_a_register_with_a_peer_address_nobody_can_use_keeps_its_link_but_no_address(
    fleet: Fleet, address: str, caplog: pytest.LogCaptureFixture
) -> None:
    """The master hands a node's peer address to every agent that links to it. One nobody can
    connect to (an older agent listening on 0.0.0.0, or a hostile one) is not stored: links to
    that node stay down with "no address yet", and its own control link (it may be a source)
    stays up, so it does not reconnect in a loop."""
    a = fleet.join("web-a")

    async def main() -> None:
        async with fleet.control_server() as (_, port):
            register = Register(name="web-a", region="r", group="g", peer_address=address)
            async with agent_link(port, a, "web-a", register) as framed:
                await roundtrip(framed)  # answered: the link is up

    with caplog.at_level(logging.WARNING):
        anyio.run(main)
    (server,) = fleet.store.list_servers()
    assert (server.region, server.group, server.address) == ("r", "g", "")
    assert any("which no peer can connect to" in r.getMessage() for r in caplog.records)
    _no_unexpected_failure(caplog)
