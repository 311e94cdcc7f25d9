"""An in-process agent against the master's real control server: a bug in handling an
assignment costs the control link a while (it is started again with backoff), never the agent;
a saved assignment that cannot be applied does not stop the agent from starting."""

from __future__ import annotations

from typing import Any

import anyio
import msgspec
import pytest
from tests._fleet import Fleet

from relaysync.agent.service import AgentService
from relaysync.protocol.messages import Assignment

TIMEOUT_S = 20


def _failing_first(monkeypatch: pytest.MonkeyPatch, failures: int) -> list[Assignment]:
    """apply_assignment raises a bug `failures` times, then applies (the seam: no real input
    makes it fail now that each mapping's failure is contained)."""
    real = AgentService.apply_assignment
    calls: list[Assignment] = []

    async def apply(self: AgentService, assignment: Assignment, **kw: Any) -> None:
        calls.append(assignment)
        if len(calls) <= failures:
            raise RuntimeError("a bug in applying an assignment")
        await real(self, assignment, **kw)

    monkeypatch.setattr(AgentService, "apply_assignment", apply)
    return calls


async def _run_until_applied(fleet: Fleet, agent_for: Any) -> AgentService:
    async with fleet.control_server() as (_control, port):
        agent = agent_for(port)
        async with anyio.create_task_group() as tg:
            await tg.start(agent.serve)
            with anyio.fail_after(TIMEOUT_S):
                while agent.epoch < 0:
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    return agent


def test_a_bug_in_applying_an_assignment_restarts_the_control_link_only(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _failing_first(monkeypatch, failures=1)
    agent = anyio.run(_run_until_applied, fleet, lambda port: fleet.agent_service("web-1", port))
    assert len(calls) == 2 and agent.epoch >= 0  # the link came back and got it again


def test_a_saved_assignment_that_cannot_be_applied_does_not_stop_the_start(
    fleet: Fleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _failing_first(monkeypatch, failures=1)

    def agent_for(port: int) -> AgentService:
        agent = fleet.agent_service("web-1", port)
        saved = Assignment(epoch=7, mappings=(), peers=())
        agent._assignment_path().write_bytes(msgspec.msgpack.encode(saved))
        return agent

    agent = anyio.run(_run_until_applied, fleet, agent_for)
    assert calls[0].epoch == 7 and agent.epoch >= 0  # then the master's own
