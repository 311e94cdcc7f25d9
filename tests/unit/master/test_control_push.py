"""ControlServer: a change goes to every connected agent at once. Pushed one agent after the
other, a new mapping's source waited for its targets' assignments to be computed and sent (and
behind an agent whose link had stalled, every agent after it waited as long)."""

from __future__ import annotations

import ssl
from typing import Any

import anyio

from relaysync.master._control_trust import AgentLink
from relaysync.master.control import ControlServer
from relaysync.protocol.messages import Assignment

WAIT_S = 20.0


class _Store:
    def assignment_for(self, node_id: str, *args: Any, **kwargs: Any) -> Assignment:
        return Assignment(epoch=7, mappings=(), peers=())


class _Framed:
    """An agent's end of the control link; a stalled one takes nothing until `flowing`."""

    def __init__(self, flowing: anyio.Event | None = None) -> None:
        self.flowing = flowing
        self.sent: list[Assignment] = []

    async def send(self, message: Assignment) -> None:
        if self.flowing is not None:
            await self.flowing.wait()
        self.sent.append(message)


def _control() -> ControlServer:
    return ControlServer(
        host="127.0.0.1",
        port=0,
        ctx=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER),
        store=_Store(),  # type: ignore[arg-type]
        events=None,  # type: ignore[arg-type]
        joblog=None,  # type: ignore[arg-type]
    )


def test_an_agent_whose_link_stalls_delays_no_other_agents_assignment() -> None:
    stalled: list[_Framed] = []
    other = _Framed()

    async def main() -> None:
        control = _control()
        flowing = anyio.Event()
        stalled.append(_Framed(flowing))
        for name, framed in (("stalled", stalled[0]), ("other", other)):  # the stalled one first
            control.links[name] = AgentLink(node_id=name, name=name, framed=framed)  # type: ignore[arg-type]
        async with anyio.create_task_group() as tg:
            tg.start_soon(control._push_loop)
            control.notify_change()
            with anyio.fail_after(WAIT_S):
                while not other.sent:
                    await anyio.sleep(0.01)
                assert not stalled[0].sent
                flowing.set()
                while not stalled[0].sent:
                    await anyio.sleep(0.01)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert [a.epoch for a in stalled[0].sent + other.sent] == [7, 7]
