"""Bandwidth limits: time-of-day windows (days, past midnight, timezones) and a token bucket whose
rate changes while a stream runs, on a fake clock."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
import xxhash

from relaysync.constants import CHUNK_BYTES
from relaysync.errors import ConfigError
from relaysync.protocol.messages import BandwidthWindow, FileChunk
from relaysync.transfer import ops
from relaysync.transfer.bandwidth import (
    BURST_S,
    BandwidthSchedule,
    TokenBucket,
    mbit_to_bytes,
    parse_days,
)

# 2026-11-23 is a Monday.
MONDAY = datetime(2026, 11, 23, tzinfo=UTC)


def at(day: int, hh: int, mm: int = 0) -> datetime:
    """Monday + `day` days at hh:mm UTC."""
    return MONDAY + timedelta(days=day, hours=hh, minutes=mm)


def window(days: str = "", start: str = "08:00", end: str = "20:00", mbit: float = 50.0) -> BandwidthWindow:
    return BandwidthWindow(days=days, start=start, end=end, bandwidth_limit_mbit=mbit)


def test_weekday_working_hours_limited_else_base() -> None:
    s = BandwidthSchedule(0.0, [window("mon-fri")])
    assert s.limit_mbit(at(0, 8)) == 50  # start is inclusive
    assert s.limit_mbit(at(0, 19, 59)) == 50
    assert s.limit_mbit(at(0, 20)) == 0  # end is exclusive
    assert s.limit_mbit(at(0, 7, 59)) == 0
    assert s.limit_mbit(at(4, 12)) == 50  # friday
    assert s.limit_mbit(at(5, 12)) == 0  # saturday
    assert s.limit_mbit(at(6, 12)) == 0  # sunday


def test_window_past_midnight_belongs_to_the_day_it_starts() -> None:
    s = BandwidthSchedule(100.0, [window("fri", "22:00", "06:00", 10)])
    assert s.limit_mbit(at(4, 22)) == 10  # friday night
    assert s.limit_mbit(at(5, 0)) == 10  # saturday 00:00, still friday's window
    assert s.limit_mbit(at(5, 5, 59)) == 10
    assert s.limit_mbit(at(5, 6)) == 100
    assert s.limit_mbit(at(5, 22)) == 100  # saturday night: not a friday
    assert s.limit_mbit(at(4, 3)) == 100  # friday early morning: thursday had no window


@pytest.mark.parametrize(("text", "days"), [
    ("", set(range(7))),
    ("*", set(range(7))),
    ("mon-fri", {0, 1, 2, 3, 4}),
    ("sat,sun", {5, 6}),
    ("fri-mon", {4, 5, 6, 0}),  # a range wraps over the week's end
    ("Mon, Wed-Thu", {0, 2, 3}),
    ("sunday", {6}),
])
def test_day_specs(text: str, days: set[int]) -> None:
    assert parse_days(text) == days


def test_first_matching_window_wins_overlaps_allowed() -> None:
    s = BandwidthSchedule(5.0, [window("mon", "09:00", "10:00", 1), window("", "00:00", "24:00", 20)])
    assert s.limit_mbit(at(0, 9, 30)) == 1
    assert s.limit_mbit(at(0, 11)) == 20
    assert s.limit_mbit(at(3, 9, 30)) == 20


def test_times_are_in_the_policy_timezone() -> None:
    s = BandwidthSchedule(0.0, [window("mon-fri", "08:00", "20:00", 50)], timezone="Asia/Tokyo")  # UTC+9
    assert s.limit_mbit(at(0, 0)) == 50  # 09:00 monday in Tokyo
    assert s.limit_mbit(at(0, 11, 30)) == 0  # 20:30 in Tokyo
    assert s.limit_mbit(at(4, 23)) == 0  # 08:00 saturday in Tokyo (friday in UTC)
    assert s.limit_mbit(at(6, 23)) == 50  # 08:00 monday in Tokyo (sunday in UTC)
    paris = BandwidthSchedule(0.0, [window("", "08:00", "09:00", 7)], timezone="Europe/Paris")
    assert paris.limit_mbit(datetime(2026, 7, 1, 6, 30, tzinfo=UTC)) == 7  # summer: UTC+2
    assert paris.limit_mbit(datetime(2026, 1, 7, 7, 30, tzinfo=UTC)) == 7  # winter: UTC+1
    assert paris.limit_mbit(datetime(2026, 1, 7, 6, 30, tzinfo=UTC)) == 0


@pytest.mark.parametrize(("windows", "timezone", "message"), [
    ([window(start="8:60")], "", "window 1: window time '8:60' must be HH:MM"),
    ([window(start="24:00")], "", "between 00:00 and 23:59"),
    ([window(end="25:00")], "", "between 00:00 and 24:00"),
    ([window(start="noon")], "", "must be HH:MM"),
    ([window(), window(days="mon-frx")], "", "window 2: window days 'mon-frx': 'frx' is not a day"),
    ([window(start="10:00", end="10:00")], "", "is empty (00:00-24:00 is a whole day)"),
    ([window(mbit=-1)], "", "bandwidth limit must be >= 0"),
    ([window()] * 25, "", "at most 24 bandwidth windows"),
    ([window()], "Mars/Olympus_Mons", "timezone 'Mars/Olympus_Mons' is not an IANA name"),
])
def test_bad_windows_refused_clearly(windows: list[BandwidthWindow], timezone: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        BandwidthSchedule(0.0, windows, timezone)


def test_rate_follows_the_clock_and_falls_back_to_the_agent_limit() -> None:
    now = [at(0, 7, 59, )]
    rate = BandwidthSchedule(0.0, [window("mon-fri", mbit=80)]).rate(fallback_mbit=400, now=lambda: now[0])
    assert rate() == mbit_to_bytes(400)  # no limit from the policy: the agent's own
    now[0] = at(0, 8, 0)
    assert rate() == mbit_to_bytes(80)  # the cached minute does not outlive its minute
    now[0] = at(0, 7, 0)  # a clock that steps back is not served a stale cache
    assert rate() == mbit_to_bytes(400)
    constant = BandwidthSchedule(30.0).rate(fallback_mbit=400)
    assert constant() == mbit_to_bytes(30)


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await anyio.lowlevel.checkpoint()


def test_token_bucket_rate_changes_mid_stream() -> None:
    """1 MB/s until t=10 s, then 4 MB/s: the bytes per second of a steady stream follow."""
    clock = FakeClock()
    start = clock.now
    bucket = TokenBucket(lambda: 1e6 if clock.now < start + 10 else 4e6, clock=clock, sleep=clock.sleep)
    sent_at: list[tuple[float, int]] = []

    async def stream() -> None:
        total = 0
        while clock.now < start + 20:
            await bucket.consume(65536)
            total += 65536
            sent_at.append((clock.now - start, total))

    anyio.run(stream)

    def rate(t0: float, t1: float) -> float:
        a = next(s for s in sent_at if s[0] >= t0)
        b = next(s for s in sent_at if s[0] >= t1)
        return (b[1] - a[1]) / (b[0] - a[0])

    assert rate(2, 9) == pytest.approx(1e6, rel=0.02)
    assert rate(11, 19) == pytest.approx(4e6, rel=0.02)


def test_token_bucket_unlimited_then_limited_starts_from_one_burst() -> None:
    clock = FakeClock()
    limit = [0.0]
    bucket = TokenBucket(lambda: limit[0], clock=clock, sleep=clock.sleep)

    async def go() -> None:
        await bucket.consume(10_000_000)  # unlimited: no wait
        assert clock.now == 1000.0
        limit[0] = 1e6
        clock.now += 3600  # an hour unlimited saves up nothing
        t = clock.now
        await bucket.consume(1_250_000)  # the burst (0.25 s worth) plus 1 s of debt
        assert clock.now - t == pytest.approx(1.0)

    anyio.run(go)


@pytest.mark.parametrize(("mbit", "chunk"), [(0, CHUNK_BYTES), (1, 16 * 1024), (4, 65536), (100, CHUNK_BYTES),
                                             (10_000, CHUNK_BYTES)])
def test_a_limited_link_sends_file_data_in_messages_of_about_a_burst(mbit: float, chunk: int) -> None:
    """A message goes out at line rate before its bytes are paid for: under a limit it carries
    about BURST_S of data (a power of two, 16 KiB at least), not a whole CHUNK_BYTES."""
    assert TokenBucket.from_mbit(mbit).chunk_bytes(CHUNK_BYTES) == min(chunk, CHUNK_BYTES)


def test_the_most_sent_in_any_second_under_a_low_limit_stays_near_the_limit(tmp_path: Path) -> None:
    """1 Mbit/s, a 1 MiB file: the file's messages, paced by the bucket on a fake clock, put at
    most the limit plus one burst on the wire in any second (before: a whole 1 MiB at once)."""
    clock = FakeClock()
    start = clock.now
    bucket = TokenBucket(mbit_to_bytes(1), clock=clock, sleep=clock.sleep)
    (tmp_path / "f").write_bytes(os.urandom(CHUNK_BYTES))
    sent: list[tuple[float, int]] = []

    async def stream() -> None:
        for message in ops.iter_file_messages(tmp_path, "f", 1, options=ops.SendOptions(bandwidth=bucket)):
            if isinstance(message, FileChunk):
                sent.append((clock.now - start, len(message.data)))  # on the wire now, paid after
                await bucket.consume(len(message.data))

    anyio.run(stream)
    most = max(sum(n for t, n in sent if s <= t < s + 1) for s, _ in sent)
    assert most <= mbit_to_bytes(1) * (1 + BURST_S) + 16 * 1024, most


@pytest.mark.parametrize("rates", [(4, 0), (0, 4), (1, 100)], ids=["limit lifted", "limit starts", "limit raised"])
def test_a_resume_lands_on_a_message_boundary_whatever_the_rate_does_meanwhile(
        tmp_path: Path, rates: tuple[float, float]) -> None:
    """The target holds 2 MiB of a 3 MiB file; the rate changes while the kept prefix is re-read:
    the first message sent starts exactly at the resume point."""
    data = os.urandom(3 * CHUNK_BYTES)
    (tmp_path / "f").write_bytes(data)
    digest = xxhash.xxh3_128(data).digest()
    reads = [0]

    def rate() -> float:
        reads[0] += 1
        return mbit_to_bytes(rates[0] if reads[0] < 5 else rates[1])

    options = ops.SendOptions(bandwidth=TokenBucket(rate), resume={("f", digest): 2 * CHUNK_BYTES})
    chunks = [m for m in ops.iter_file_messages(tmp_path, "f", 1, expected_hash=digest, options=options)
              if isinstance(m, FileChunk)]
    assert chunks[0].offset == 2 * CHUNK_BYTES
    assert b"".join(c.data for c in chunks) == data[2 * CHUNK_BYTES:]
