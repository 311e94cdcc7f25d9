"""One figures report names at most what fits a frame, and publishes a bounded number of events.

Found in review: a failure's reason was cut at 500 characters, not bytes, so 4,096 reasons of
3-byte characters (6 MB) made every figures report unencodable (the control link dropped at
each); and one report could publish 4,096 `source_failing` events, flooding the event ring."""

from __future__ import annotations

import time

import anyio
from tests._fleet import Fleet, agent_link, roundtrip

from relaysync.constants import MAX_MESSAGE_BYTES
from relaysync.master._control_sources import MAX_FAILURE_EVENTS
from relaysync.master.events import EventType
from relaysync.protocol.framing import encode_frame
from relaysync.protocol.messages import (
    MAX_SOURCE_ERROR,
    MAX_SOURCE_FAILURES,
    MetricsReport,
    SourceFailure,
    failure_reason,
)

WAIT_S = 30.0
MAPPINGS = MAX_FAILURE_EVENTS + 8


def _failing(reason: str, *mapping_ids: int) -> MetricsReport:
    return MetricsReport(
        at=time.time(),
        samples=(),
        source_failures=tuple(
            SourceFailure(mapping_id=m, error=failure_reason(reason), since=1.0)
            for m in mapping_ids
        ),
    )


def test_a_reason_is_cut_in_bytes_at_a_character_and_a_full_report_fits_a_frame() -> None:
    reason = failure_reason("OSError: /srv/" + "€" * 1000)  # 3 bytes each
    assert len(reason.encode()) <= MAX_SOURCE_ERROR
    assert reason == "OSError: /srv/" + "€" * ((MAX_SOURCE_ERROR - 14) // 3)
    assert failure_reason("é" * MAX_SOURCE_ERROR) == "é" * (MAX_SOURCE_ERROR // 2)
    full = _failing("€" * MAX_SOURCE_ERROR, *range(1, MAX_SOURCE_FAILURES + 1))
    assert len(encode_frame(full)) < MAX_MESSAGE_BYTES


def test_one_report_of_many_failures_publishes_a_bounded_number_of_events(fleet: Fleet) -> None:
    src, _ = fleet.join("src"), fleet.join("web-a")
    ids = []
    for n in range(MAPPINGS):
        resp = fleet.client.post(
            "/api/mappings",
            json={
                "name": f"site-{n}",
                "source": "src",
                "source_path": f"/srv/site-{n}",
                "targets": [{"server": "web-a", "path": f"/srv/site-{n}"}],
            },
        )
        assert resp.status_code == 201, resp.text
        ids.append(int(resp.json()["id"]))

    def events(kind: EventType) -> int:
        return sum(e.type == kind for e in fleet.events.since(0))

    async def until(condition: object) -> None:
        with anyio.fail_after(WAIT_S):
            while not condition():  # type: ignore[operator]
                await anyio.sleep(0.02)

    async def main() -> None:
        async with fleet.control_server() as (control, port):
            async with agent_link(port, src, "src") as framed:
                await framed.send(_failing("OSError: disk gone " + "ü" * 400, *ids))
                await roundtrip(framed)
                await until(lambda: all(control.source_failures.get(m, src.node_id) for m in ids))
                assert events(EventType.SOURCE_FAILING) == MAX_FAILURE_EVENTS
                await framed.send(_failing("x"))  # every one runs again
                await roundtrip(framed)
                await until(lambda: events(EventType.SOURCE_FAILURE_ENDED) > 0)
                assert not any(control.source_failures.get(m, src.node_id) for m in ids)
                assert events(EventType.SOURCE_FAILURE_ENDED) == MAX_FAILURE_EVENTS

    anyio.run(main)
