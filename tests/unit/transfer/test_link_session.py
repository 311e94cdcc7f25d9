"""The link session's read loop: a session ends with the target's own refusal, never with the
EndOfStream a compare waiting for a reply would see if the loop closed the replies' stream."""

from __future__ import annotations

from types import SimpleNamespace

import anyio
import pytest

from relaysync._util.aio import error_leaves
from relaysync.errors import PeerRefused
from relaysync.protocol.messages import AnyMessage, DigestRequest, Error, ErrorCode
from relaysync.transfer._link_session import _Session
from relaysync.transfer.ops import SendOptions


class _RefusingTarget:
    """A framed stream whose target answers a digest request with UNKNOWN_PEER."""

    def __init__(self) -> None:
        self.asked = anyio.Event()

    async def send(self, message: AnyMessage) -> None:
        if isinstance(message, DigestRequest):
            self.asked.set()

    async def receive(self) -> AnyMessage:
        await self.asked.wait()
        return Error(code=ErrorCode.UNKNOWN_PEER, detail="s is no peer of this agent any more")


def test_a_refusal_during_a_compare_ends_the_session_with_the_refusal() -> None:
    link = SimpleNamespace(source=SimpleNamespace(mapping_id=1), failures=0, options=SendOptions())
    session = _Session(link, framed=_RefusingTarget())  # type: ignore[arg-type]

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(session.read_loop)
            await session.request_listings([""], hashes_only=True, after="")

    for _ in range(20):  # the order the group's two tasks end in must not matter
        with pytest.raises(BaseExceptionGroup) as ended:
            anyio.run(main)
        leaves = list(error_leaves(ended.value))
        assert [type(e) for e in leaves] == [PeerRefused], leaves
        assert "no peer of this agent" in str(leaves[0])
