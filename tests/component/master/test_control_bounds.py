"""The master's control server given integers no agent makes (over 2**63 - 1, which msgpack
carries and a SQL BIGINT does not): the frame is malformed, the link ends, nothing is stored."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from tests._fleet import TIMEOUT_S, Fleet, agent_link, roundtrip

from relaysync.master.store import Store
from relaysync.protocol.framing import FramedStream
from relaysync.protocol.messages import CommitRecord, CommitReport, Ping, Pong, ReleaseReport

OVER_INT64 = 2**63


@pytest.fixture
def fleet(tmp_path: Path, store: Store) -> Iterator[Fleet]:
    f = Fleet(tmp_path, store)
    yield f
    f.close()


def _mapping(fleet: Fleet, source: str, target: str) -> int:
    resp = fleet.client.post(
        "/api/mappings",
        json={
            "name": "docs",
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
