"""Bandwidth limits per link: a token bucket that paces what a sender writes to the socket.

The rate may change while a transfer runs: a policy with time-of-day windows
(`BandwidthSchedule`) hands the bucket a function that says the limit in force now, and the
bucket asks it at every message, so a link slows down at 08:00 in the middle of a big file.
A sender pays for a message before it sends it, and a transfer starts with little credit
(`begin`), so over a transfer of a few seconds the bytes on the wire stay within BURST_S of it.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import anyio

from relaysync.errors import ConfigError
from relaysync.protocol.messages import BandwidthWindow

# What one message carries under a limit, and the credit a transfer starts with, in seconds'
# worth: small, so that a 2 s transfer stays within 10% of the limit (+5%); a message of it
# costs one frame and one sleep, nothing next to the 0.1 s of bytes it carries.
BURST_S = 0.1
# The credit kept while a transfer runs: a sender the event loop wakes late (a loaded host)
# sends what it missed, up to this, instead of falling short of the limit.
SLACK_S = 0.25
MIN_LIMITED_CHUNK = (
    16 * 1024
)  # file data per message under a limit, at least (framing and TLS overhead)
MAX_WINDOWS = 24  # per policy: enough for one per hour of the day
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_TIME = re.compile(r"(\d{1,2}):(\d{2})")
MINUTES_PER_DAY = 24 * 60

Rate = Callable[[], float]  # bytes per second now; 0 = unlimited


def mbit_to_bytes(mbit_per_s: float) -> float:
    return mbit_per_s * 1_000_000 / 8


class TokenBucket:
    """Paces a byte stream to a rate in bytes per second (a number, or a function asked at every
    `consume`); 0 means unlimited. `clock` and `sleep` are anyio's unless a test passes its own."""

    def __init__(
        self,
        rate_bytes_per_s: float | Rate,
        *,
        clock: Callable[[], float] | None = None,
        sleep: Callable[[float], Awaitable[object]] | None = None,
    ) -> None:
        self._rate = rate_bytes_per_s
        self._clock = clock or anyio.current_time
        self._sleep = sleep or anyio.sleep
        self._tokens = 0.0
        self._last: float | None = None

    @classmethod
    def from_mbit(cls, mbit_per_s: float) -> TokenBucket:
        return cls(mbit_to_bytes(mbit_per_s))

    @property
    def rate(self) -> float:
        """The rate in force now, in bytes per second."""
        return self._rate() if callable(self._rate) else self._rate

    @property
    def limited(self) -> bool:
        return self.rate > 0

    def chunk_bytes(self, largest: int) -> int:
        """How much file data one message should carry: `largest` when unlimited, else about a
        burst's worth (a power of two, at least MIN_LIMITED_CHUNK), so that a message sent at
        line rate before its bytes are paid for never exceeds the limit by more than a burst."""
        rate = self.rate
        if rate <= 0:
            return largest
        size = MIN_LIMITED_CHUNK
        while size * 2 <= min(largest, rate * BURST_S):
            size *= 2
        return min(size, largest)

    def begin(self) -> None:
        """A transfer starts: the credit saved up while the link was idle is cut to BURST_S
        worth, so a transfer of a few seconds stays within 10% of the limit. (A transfer that
        runs keeps up to SLACK_S worth: the event loop woke its sender late.)"""
        rate = self.rate
        if rate > 0 and self._last is not None:
            self._refill(rate)
            self._tokens = min(self._tokens, rate * BURST_S)

    async def consume(self, nbytes: int) -> None:
        """Wait until `nbytes` may be sent: call before sending them. What exceeds the credit is
        paid by sleeping, so a message goes out only once its bytes are paid for; a message larger
        than the credit (made before a limit started) waits for the rest."""
        rate = self.rate
        if rate <= 0:
            self._last = None  # unlimited for now: a later limit starts from a fresh burst
            return
        self._refill(rate)
        self._tokens -= nbytes
        if self._tokens < 0:
            await self._sleep(-self._tokens / rate)

    def _refill(self, rate: float) -> None:
        now = self._clock()
        if self._last is None:
            self._last, self._tokens = now, rate * BURST_S
        # A lower rate caps what was saved up at its own slack; a debt is paid at the new rate.
        self._tokens = min(self._tokens + (now - self._last) * rate, rate * SLACK_S)
        self._last = now


# --- Time-of-day windows ---


@dataclass(frozen=True)
class _Window:
    days: frozenset[int]  # weekday numbers (Monday = 0) the window starts on
    start_min: int
    end_min: int  # <= start_min: runs past midnight into the next day
    limit_mbit: float

    def holds(self, weekday: int, minute: int) -> bool:
        if self.start_min < self.end_min:
            return weekday in self.days and self.start_min <= minute < self.end_min
        started_today = weekday in self.days and minute >= self.start_min
        started_yesterday = (weekday - 1) % 7 in self.days and minute < self.end_min
        return started_today or started_yesterday


def parse_days(text: str) -> frozenset[int]:
    """ "mon-fri", "sat,sun", "fri-mon" (wraps), "" or "*" (every day) -> weekday numbers (Monday = 0).

    Raises:
        ConfigError: an unknown day name or a malformed range.
    """
    text = text.strip().lower()
    if text in ("", "*"):
        return frozenset(range(7))
    days: set[int] = set()
    for item in text.split(","):
        first, _, last = item.strip().partition("-")
        a, b = _day(first, text), _day(last, text) if last else _day(first, text)
        days.update((a + i) % 7 for i in range((b - a) % 7 + 1))
    return frozenset(days)


def _day(name: str, text: str) -> int:
    name = name.strip()[:3]
    if name not in DAYS:
        raise ConfigError(
            f"window days {text!r}: {name!r} is not a day (mon, tue, ... sun, or a range mon-fri)"
        )
    return DAYS.index(name)


def parse_minute(text: str, *, end: bool = False) -> int:
    """ "HH:MM" -> minutes after midnight; "24:00" only as an end.

    Raises:
        ConfigError: not HH:MM, or out of range.
    """
    m = _TIME.fullmatch(text.strip())
    hours, minutes = (int(m.group(1)), int(m.group(2))) if m else (-1, -1)
    value = hours * 60 + minutes
    if not m or minutes > 59 or not 0 <= value <= (MINUTES_PER_DAY if end else MINUTES_PER_DAY - 1):
        latest = "24:00" if end else "23:59"
        raise ConfigError(f"window time {text!r} must be HH:MM between 00:00 and {latest}")
    return value


def zone(name: str) -> tzinfo:
    """The timezone of a policy's windows: an IANA name, "" or "UTC" for UTC.

    Raises:
        ConfigError: a name zoneinfo does not know.
    """
    if name in ("", "UTC"):
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ConfigError(
            f"timezone {name!r} is not an IANA name zoneinfo knows (e.g. Europe/Paris)"
        ) from exc


def _window(w: BandwidthWindow, index: int) -> _Window:
    try:
        start, end = parse_minute(w.start), parse_minute(w.end, end=True)
        days = parse_days(w.days)
    except ConfigError as exc:
        raise ConfigError(f"window {index + 1}: {exc.args[0]}") from exc
    if start == end:
        raise ConfigError(
            f"window {index + 1}: {w.start}-{w.end} is empty (00:00-24:00 is a whole day)"
        )
    if w.bandwidth_limit_mbit < 0:
        raise ConfigError(f"window {index + 1}: bandwidth limit must be >= 0 (0 = unlimited)")
    return _Window(days=days, start_min=start, end_min=end, limit_mbit=w.bandwidth_limit_mbit)


class BandwidthSchedule:
    """The limit in force at a given time: the first window that holds, else the base limit.

    Raises:
        ConfigError: (constructor) a malformed window, too many, or an unknown timezone.
    """

    def __init__(
        self, base_mbit: float, windows: Sequence[BandwidthWindow] = (), timezone: str = ""
    ) -> None:
        if len(windows) > MAX_WINDOWS:
            raise ConfigError(
                f"a policy has at most {MAX_WINDOWS} bandwidth windows, got {len(windows)}"
            )
        self.base_mbit = base_mbit
        self._windows = [_window(w, i) for i, w in enumerate(windows)]
        self._zone = zone(timezone)

    def limit_mbit(self, at: datetime) -> float:
        """The limit at `at` (an aware datetime), in Mbit/s; 0 = unlimited."""
        local = at.astimezone(self._zone)
        minute = local.hour * 60 + local.minute
        weekday = local.weekday()
        return next(
            (w.limit_mbit for w in self._windows if w.holds(weekday, minute)), self.base_mbit
        )

    def rate(
        self, *, fallback_mbit: float = 0.0, now: Callable[[], datetime] | None = None
    ) -> Rate:
        """A `TokenBucket` rate: bytes per second now.

        A limit of 0 (from a window or the base) means "no limit from the policy": `fallback_mbit`
        (the agent's own limit) applies then. Windows have minute edges, so the limit is worked out
        once per minute and the clock read at each call is all the cost.
        """
        clock = now or (lambda: datetime.now(UTC))
        if not self._windows:
            constant = mbit_to_bytes(self.base_mbit or fallback_mbit)
            return lambda: constant
        cached = [
            0.0,
            -1.0,
            0.0,
        ]  # the minute it holds for, as [from, until) unix times, and the rate

        def current() -> float:
            at = clock()
            stamp = at.timestamp()
            if not cached[0] <= stamp < cached[1]:
                minute = at.replace(second=0, microsecond=0)
                cached[:] = [
                    minute.timestamp(),
                    (minute + timedelta(minutes=1)).timestamp(),
                    mbit_to_bytes(self.limit_mbit(at) or fallback_mbit),
                ]
            return cached[2]

        return current
