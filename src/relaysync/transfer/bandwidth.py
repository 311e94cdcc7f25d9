"""Bandwidth limits per link: a token bucket that paces what a sender writes to the socket."""

from __future__ import annotations

import anyio

BURST_S = 0.25  # at most this many seconds' worth of bytes go out at once


class TokenBucket:
    """Paces a byte stream to `rate_bytes_per_s`; 0 means unlimited."""

    def __init__(self, rate_bytes_per_s: float) -> None:
        self.rate = rate_bytes_per_s
        self._tokens = 0.0
        self._last = 0.0

    @classmethod
    def from_mbit(cls, mbit_per_s: float) -> TokenBucket:
        return cls(mbit_per_s * 1_000_000 / 8)

    @property
    def limited(self) -> bool:
        return self.rate > 0

    async def consume(self, nbytes: int) -> None:
        """Wait until `nbytes` may be sent (call after sending them: debt is paid by sleeping)."""
        if not self.limited:
            return
        now = anyio.current_time()
        if self._last == 0.0:
            self._last = now
            self._tokens = self.rate * BURST_S
        self._tokens = min(self._tokens + (now - self._last) * self.rate, self.rate * BURST_S)
        self._last = now
        self._tokens -= nbytes
        if self._tokens < 0:
            await anyio.sleep(-self._tokens / self.rate)
