"""ControlServer: a change goes to every connected agent on its own. Pushed one agent after the
other, a new mapping's source waited for its targets' assignments to be computed and sent, and
behind an agent whose link had stalled every agent after it waited as long; pushed in rounds,
the next change waited for the stalled link's round to end."""

from __future__ import annotations

import ssl
from typing import Any

import anyio

from relaysync.master._control_trust import AgentLink
from relaysync.master.control import ControlServer
from relaysync.protocol.messages import Assignment

WAIT_S = 20.0


class _Store:
    def __init__(self) -> None:
        self.epoch = 7

    def assignment_for(self, node_id: str, *args: Any, **kwargs: Any) -> Assignment:
        return Assignment(epoch=self.epoch, mappings=(), peers=())


class _Framed:
    """An agent's end of the control link; a stalled one takes nothing until `flowing`."""

    def __init__(self, flowing: anyio.Event | None = None) -> None:
        self.flowing = flowing
        self.sent: list[Assignment] = []

    async def send(self, message: Assignment) -> None:
        if self.flowing is not None:
            await self.flowing.wait()
        self.sent.append(message)


def _control(store: _Store) -> ControlServer:
    return ControlServer(
        host="127.0.0.1",
        port=0,
        ctx=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER),
        store=store,  # type: ignore[arg-type]
        events=None,  # type: ignore[arg-type]
        joblog=None,  # type: ignore[arg-type]
    )


async def _until(condition: Any) -> None:
    with anyio.fail_after(WAIT_S):
        while not condition():
            await anyio.sleep(0.01)


def test_an_agent_whose_link_stalls_delays_no_other_agents_assignments() -> None:
    """This change and the next: the other agent gets both while the stalled link holds the
    first; once it flows, the stalled agent gets the newest, the epochs in order."""
    flowing = anyio.Event()
    stalled, other = _Framed(flowing), _Framed()
    store = _Store()

    async def main() -> None:
        control = _control(store)
        async with anyio.create_task_group() as tg:
            tg.start_soon(control._push_loop)
            for name, framed in (("stalled", stalled), ("other", other)):  # the stalled one first
                link = AgentLink(node_id=name, name=name, framed=framed)  # type: ignore[arg-type]
                control.links[name] = link
                tg.start_soon(control._pusher, link)  # as each link's `_read_loop` starts it
            control.notify_change()
            await _until(lambda: [a.epoch for a in other.sent] == [7])
            store.epoch = 8
            control.notify_change()
            await _until(lambda: [a.epoch for a in other.sent] == [7, 8])
            assert not stalled.sent
            flowing.set()
            await _until(lambda: stalled.sent and stalled.sent[-1].epoch == 8)
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert [a.epoch for a in stalled.sent] in ([7, 8], [8])


def test_no_assignment_goes_out_once_a_graceful_stop_began_meanwhile() -> None:
    """A stop that begins while a push computes its assignment (or waits for a slot to): links
    end one by one, and a re-plan sent meanwhile would route around agents that only restart."""
    store = _Store()
    framed = _Framed()

    async def main() -> None:
        control = _control(store)
        link = AgentLink(node_id="a", name="a", framed=framed)  # type: ignore[arg-type]

        def assignment_then_stop(node_id: str, *args: Any, **kwargs: Any) -> Assignment:
            control._stopping = True
            return Assignment(epoch=9, mappings=(), peers=())

        store.assignment_for = assignment_then_stop  # type: ignore[method-assign]
        await control._push(link)

    anyio.run(main)
    assert framed.sent == []
