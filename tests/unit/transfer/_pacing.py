"""Shared helpers for the bandwidth tests: a fake clock for the token bucket, and a link whose
session sends into a fake framed stream that records when each frame went on the wire."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio

from relaysync.protocol.framing import encode_frame
from relaysync.protocol.messages import AnyMessage
from relaysync.transfer import ops
from relaysync.transfer._link_session import _Session
from relaysync.transfer.link_ends import TargetAddress
from relaysync.transfer.sender import TargetLink

Sent = list[tuple[float, int, AnyMessage]]  # (time on the fake clock, frame bytes, message)


@dataclass
class FakeClock:
    """`clock` and `sleep` for a TokenBucket: sleeping moves the time on, at once."""

    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await anyio.lowlevel.checkpoint()


@dataclass
class FakeFramed:
    """The framed stream of a session: each frame goes on the wire at the clock's time, at once."""

    clock: FakeClock
    bytes_sent: int = 0
    sends: int = 0  # send_many calls
    sent: Sent = field(default_factory=list)

    async def send_many(self, messages: list[AnyMessage]) -> None:
        self.sends += 1
        for message in messages:
            n = len(encode_frame(message))
            self.bytes_sent += n
            self.sent.append((self.clock.now, n, message))

    async def send(self, message: AnyMessage) -> None:
        await self.send_many([message])


def make_link(options: ops.SendOptions, root: Path, kind: type[TargetLink] = TargetLink) -> Any:
    """A link of mapping 1 (a TargetLink, or a RelayLink whose tree has committed everything,
    its manifest knowing no version) on `root`."""
    source = SimpleNamespace(
        mapping_id=1, root=root, committed=10**9, manifest=SimpleNamespace(get=lambda path: None)
    )
    return kind(
        source,
        TargetAddress("n" * 64, "child", lambda: ""),
        None,  # type: ignore[arg-type]
        node_id="m" * 64,
        name="me",
        options=options,
    )


def session(link: TargetLink, framed: FakeFramed) -> _Session:
    return _Session(link, framed)  # type: ignore[arg-type]


def most_in_any_second(sent: Sent) -> int:
    """The most frame bytes that went on the wire in any one second (from a frame's time on)."""
    return max(sum(n for t, n, _ in sent if s <= t < s + 1) for s, _, _ in sent)
