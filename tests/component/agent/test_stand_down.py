"""An in-process agent against the master's real control server: refused by the master as no
member of the fleet (revoked), it stands down, its source stopped and its state kept; taken
again (the master's database restored from before the revoke), it runs the assignment the
master sends. The integration test (tests/integration/test_revoked_source.py) shows the refused
sessions stop on real processes; this one the way back, which needs a revoke reversed.

Found in review: a revoked agent went on with its last assignment, retrying its targets' refused
sessions for ever."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
from sqlalchemy import delete
from tests._fleet import Fleet

from relaysync.agent import master_link
from relaysync.agent.service import AgentService
from relaysync.master.store.models import RevokedNode

TIMEOUT_S = 30


async def _until(what: str, condition: object) -> None:
    with anyio.fail_after(TIMEOUT_S):
        while not condition():  # type: ignore[operator]
            await anyio.sleep(0.05)


def _source_running(agent: AgentService) -> bool:
    return any(r.source is not None for r in agent.sources.values())


def test_a_refused_agent_stands_down_and_resumes_when_taken_again(
    fleet: Fleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(master_link, "REFUSED_RETRY_S", 0.5)  # asked again soon, not in 300 s
    fleet.join("t1")  # the mapping's target: never runs here (the link to it retries)
    source = tmp_path / "source"
    source.mkdir()
    (source / "kept.txt").write_text("kept")

    async def main() -> AgentService:
        async with fleet.control_server() as (_control, port):
            agent = fleet.agent_service("web-1", port)
            async with anyio.create_task_group() as tg:
                await tg.start(agent.serve)
                body = {
                    "name": "m",
                    "source": "web-1",
                    "source_path": str(source),
                    "targets": [{"server": "t1", "path": str(tmp_path / "t1")}],
                }
                r = fleet.client.post("/api/mappings", json=body)
                assert r.status_code in (200, 201), r.text
                await _until("the source running", lambda: _source_running(agent))
                assert fleet.client.post("/api/servers/web-1/revoke").status_code == 200
                # (the assignment made after the revoke may stop the source first, before the
                # link closes and the master refuses the agent: then it stands down after)
                await _until("standing down", lambda: agent.stood_down and not agent.sources)
                state = agent.data_dir / "sources" / str(r.json()["id"])
                assert state.is_dir() and any(state.iterdir())  # its journal and manifest kept
                assert (source / "kept.txt").read_text() == "kept"
                with fleet.store._write("reverse the revoke") as session:
                    session.execute(delete(RevokedNode))  # a backup from before the revoke
                await _until("the source running again", lambda: _source_running(agent))
                assert not agent.stood_down
                tg.cancel_scope.cancel()
        return agent

    anyio.run(main)
