"""Bandwidth limits: time-of-day windows (days, past midnight, timezones) and a token bucket whose
rate changes while a stream runs, on a fake clock; a link's sender paced by it, and the chunks it
cuts for a lower limit."""

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import anyio
import pytest
import xxhash

from relaysync.constants import CHUNK_BYTES
from relaysync.errors import ConfigError
from relaysync.protocol.messages import BandwidthWindow, FileChunk
from relaysync.transfer import ops, recoding
from relaysync.transfer._record_stream import BATCH_BYTES
from relaysync.transfer.bandwidth import (
    BURST_S,
    SLACK_S,
    BandwidthSchedule,
    Rate,
    TokenBucket,
    mbit_to_bytes,
    parse_days,
)
from relaysync.transfer.builds import DeltaBuild, DeltaPart
from relaysync.transfer.codec import Codec, Plain, Zstd, decode_chunk, encode_chunk
from tests.unit.transfer._pacing import FakeClock, FakeFramed, make_link, session

# 2026-11-23 is a Monday.
MONDAY = datetime(2026, 11, 23, tzinfo=UTC)


def at(day: int, hh: int, mm: int = 0) -> datetime:
    """Monday + `day` days at hh:mm UTC."""
    return MONDAY + timedelta(days=day, hours=hh, minutes=mm)


def window(
    days: str = "", start: str = "08:00", end: str = "20:00", mbit: float = 50.0
) -> BandwidthWindow:
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


@pytest.mark.parametrize(
    ("text", "days"),
    [
        ("", set(range(7))),
        ("*", set(range(7))),
        ("mon-fri", {0, 1, 2, 3, 4}),
        ("sat,sun", {5, 6}),
        ("fri-mon", {4, 5, 6, 0}),  # a range wraps over the week's end
        ("Mon, Wed-Thu", {0, 2, 3}),
        ("sunday", {6}),
    ],
)
def test_day_specs(text: str, days: set[int]) -> None:
    assert parse_days(text) == days


def test_first_matching_window_wins_overlaps_allowed() -> None:
    s = BandwidthSchedule(
        5.0, [window("mon", "09:00", "10:00", 1), window("", "00:00", "24:00", 20)]
    )
    assert s.limit_mbit(at(0, 9, 30)) == 1
    assert s.limit_mbit(at(0, 11)) == 20
    assert s.limit_mbit(at(3, 9, 30)) == 20


def test_times_are_in_the_policy_timezone() -> None:
    s = BandwidthSchedule(
        0.0, [window("mon-fri", "08:00", "20:00", 50)], timezone="Asia/Tokyo"
    )  # UTC+9
    assert s.limit_mbit(at(0, 0)) == 50  # 09:00 monday in Tokyo
    assert s.limit_mbit(at(0, 11, 30)) == 0  # 20:30 in Tokyo
    assert s.limit_mbit(at(4, 23)) == 0  # 08:00 saturday in Tokyo (friday in UTC)
    assert s.limit_mbit(at(6, 23)) == 50  # 08:00 monday in Tokyo (sunday in UTC)
    paris = BandwidthSchedule(0.0, [window("", "08:00", "09:00", 7)], timezone="Europe/Paris")
    assert paris.limit_mbit(datetime(2026, 7, 1, 6, 30, tzinfo=UTC)) == 7  # summer: UTC+2
    assert paris.limit_mbit(datetime(2026, 1, 7, 7, 30, tzinfo=UTC)) == 7  # winter: UTC+1
    assert paris.limit_mbit(datetime(2026, 1, 7, 6, 30, tzinfo=UTC)) == 0


@pytest.mark.parametrize(
    ("windows", "timezone", "message"),
    [
        ([window(start="8:60")], "", "window 1: window time '8:60' must be HH:MM"),
        ([window(start="24:00")], "", "between 00:00 and 23:59"),
        ([window(end="25:00")], "", "between 00:00 and 24:00"),
        ([window(start="noon")], "", "must be HH:MM"),
        (
            [window(), window(days="mon-frx")],
            "",
            "window 2: window days 'mon-frx': 'frx' is not a day",
        ),
        ([window(start="10:00", end="10:00")], "", "is empty (00:00-24:00 is a whole day)"),
        ([window(mbit=-1)], "", "bandwidth limit must be >= 0"),
        ([window()] * 25, "", "at most 24 bandwidth windows"),
        ([window()], "Mars/Olympus_Mons", "timezone 'Mars/Olympus_Mons' is not an IANA name"),
    ],
)
def test_bad_windows_refused_clearly(
    windows: list[BandwidthWindow], timezone: str, message: str
) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        BandwidthSchedule(0.0, windows, timezone)


def test_rate_follows_the_clock_and_falls_back_to_the_agent_limit() -> None:
    now = [
        at(
            0,
            7,
            59,
        )
    ]
    rate = BandwidthSchedule(0.0, [window("mon-fri", mbit=80)]).rate(
        fallback_mbit=400, now=lambda: now[0]
    )
    assert rate() == mbit_to_bytes(400)  # no limit from the policy: the agent's own
    now[0] = at(0, 8, 0)
    assert rate() == mbit_to_bytes(80)  # the cached minute does not outlive its minute
    now[0] = at(0, 7, 0)  # a clock that steps back is not served a stale cache
    assert rate() == mbit_to_bytes(400)
    constant = BandwidthSchedule(30.0).rate(fallback_mbit=400)
    assert constant() == mbit_to_bytes(30)


def test_token_bucket_rate_changes_mid_stream() -> None:
    """1 MB/s until t=10 s, then 4 MB/s: the bytes per second of a steady stream follow."""
    clock = FakeClock()
    start = clock.now
    bucket = TokenBucket(
        lambda: 1e6 if clock.now < start + 10 else 4e6, clock=clock, sleep=clock.sleep
    )
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
        await bucket.consume(int(1e6 * (BURST_S + 1)))  # the burst plus 1 s of debt
        assert clock.now - t == pytest.approx(1.0)

    anyio.run(go)


def test_a_transfer_starts_with_little_credit_and_a_sender_woken_late_catches_up() -> None:
    """Idle credit is cut to BURST_S when a transfer begins (a short transfer stays near the
    limit); while it runs, up to SLACK_S of lateness (a loaded event loop) is made up for."""
    clock = FakeClock()
    bucket = TokenBucket(1e6, clock=clock, sleep=clock.sleep)

    async def go() -> None:
        await bucket.consume(100_000)
        clock.now += 10  # idle
        bucket.begin()
        t = clock.now
        await bucket.consume(int(1e6 * BURST_S) + 100_000)
        assert clock.now - t == pytest.approx(0.1)  # 10 s idle saved up BURST_S, not SLACK_S
        clock.now += 0.2  # the loop woke us 0.2 s late: sent at once
        t = clock.now
        await bucket.consume(200_000)
        assert clock.now == pytest.approx(t)
        clock.now += 1.0  # 1 s late: SLACK_S of it is made up for
        t = clock.now
        await bucket.consume(int(1e6 * SLACK_S) + 100_000)
        assert clock.now - t == pytest.approx(0.1)

    anyio.run(go)


@pytest.mark.parametrize(
    ("mbit", "chunk"),
    [
        (0, CHUNK_BYTES),
        (1, 16 * 1024),
        (4, 32768),
        (10, 65536),
        (100, CHUNK_BYTES),
        (10_000, CHUNK_BYTES),
    ],
)
def test_a_limited_link_sends_file_data_in_messages_of_about_a_burst(
    mbit: float, chunk: int
) -> None:
    """A message goes out at line rate before its bytes are paid for: under a limit it carries
    about BURST_S of data (a power of two, 16 KiB at least), not a whole CHUNK_BYTES."""
    assert TokenBucket.from_mbit(mbit).chunk_bytes(CHUNK_BYTES) == min(chunk, CHUNK_BYTES)


def test_the_most_sent_in_any_second_under_a_low_limit_stays_near_the_limit(tmp_path: Path) -> None:
    """1 Mbit/s, a 1 MiB file: the file's messages, each paid for before it goes, put at most
    the limit plus one burst on the wire in any second (before: a whole 1 MiB at once)."""
    clock = FakeClock()
    start = clock.now
    bucket = TokenBucket(mbit_to_bytes(1), clock=clock, sleep=clock.sleep)
    (tmp_path / "f").write_bytes(os.urandom(CHUNK_BYTES))
    sent: list[tuple[float, int]] = []

    async def stream() -> None:
        for message in ops.iter_file_messages(
            tmp_path, "f", 1, options=ops.SendOptions(bandwidth=bucket)
        ):
            if isinstance(message, FileChunk):
                await bucket.consume(len(message.data))
                sent.append((clock.now - start, len(message.data)))  # paid for: on the wire now

    anyio.run(stream)
    most = max(sum(n for t, n in sent if s <= t < s + 1) for s, _ in sent)
    assert most <= mbit_to_bytes(1) * (1 + BURST_S), most


@pytest.mark.parametrize(
    "rates", [(4, 0), (0, 4), (1, 100)], ids=["limit lifted", "limit starts", "limit raised"]
)
def test_a_resume_lands_on_a_message_boundary_whatever_the_rate_does_meanwhile(
    tmp_path: Path, rates: tuple[float, float]
) -> None:
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
    chunks = [
        m
        for m in ops.iter_file_messages(tmp_path, "f", 1, expected_hash=digest, options=options)
        if isinstance(m, FileChunk)
    ]
    assert chunks[0].offset == 2 * CHUNK_BYTES
    assert b"".join(c.data for c in chunks) == data[2 * CHUNK_BYTES :]


# --- The sender's pacing (TargetLink._send_stream) ---


def _send_file(
    tmp_path: Path, size: int, rate: float | Callable[[FakeFramed], Rate]
) -> tuple[FakeFramed, float]:
    """Send a file of `size` random bytes over a link limited to `rate` (a number or a function
    of the framed stream), on a fake clock from 1000.0; returns the stream and the clock at the end."""
    (tmp_path / "f").write_bytes(os.urandom(size))
    clock = FakeClock()
    framed = FakeFramed(clock)
    bucket = TokenBucket(rate(framed) if callable(rate) else rate, clock=clock, sleep=clock.sleep)
    options = ops.SendOptions(bandwidth=bucket)
    link = make_link(options, tmp_path)
    anyio.run(
        link._send_stream,
        session(link, framed),
        ops.iter_file_messages(tmp_path, "f", 1, options=options),
    )
    return framed, clock.now


@pytest.mark.parametrize("mbit", [1, 10, 100])
@pytest.mark.parametrize("seconds", [2, 3])
def test_a_transfer_of_a_few_seconds_stays_within_ten_percent_of_the_limit(
    tmp_path: Path, mbit: float, seconds: float
) -> None:
    """From its first frame to its last, over an idle link (a full credit): the credit and the
    messages are small enough for +-10% (before: a 0.25 s credit and the last message's debt
    unpaid made a 2 s transfer +14%)."""
    limit = mbit_to_bytes(mbit)
    framed, _ = _send_file(tmp_path, int(limit * seconds), limit)
    first, last = framed.sent[0][0], framed.sent[-1][0]
    rate = framed.bytes_sent / (last - first)
    assert limit * 0.9 <= rate <= limit * 1.1, f"{rate / limit - 1:+.1%} over {last - first:.2f} s"


def test_a_window_starting_mid_file_slows_the_link_at_once(tmp_path: Path) -> None:
    """Unlimited for the first 2 MiB (before 08:00), then 10 Mbit/s: what was read ahead while
    unlimited (8 MiB batches of 1 MiB messages) goes at the limit too, in its messages' size
    (before: 4.2 MB in the first second of a 1.25 MB/s window)."""
    limit = mbit_to_bytes(10)
    edge: list[int] = []  # where in the frames sent the window started

    def rate(framed: FakeFramed) -> Rate:
        def now() -> float:
            if framed.bytes_sent < 2 * CHUNK_BYTES:
                return 0.0
            if not edge:
                edge.append(len(framed.sent))
            return limit

        return now

    framed, end = _send_file(tmp_path, 40 * CHUNK_BYTES, rate)
    after = framed.sent[edge[0] :]
    t0 = after[0][0]
    first_second = sum(n for t, n, _ in after if t < t0 + 1)
    assert first_second <= limit * (1 + BURST_S), (
        f"{first_second / 1e6:.2f} MB in the window's first second"
    )
    assert max(n for _, n, _ in after) <= TokenBucket(limit).chunk_bytes(CHUNK_BYTES) + 1024
    assert sum(n for _, n, _ in after) / (end - t0) == pytest.approx(limit, rel=0.02)


def test_an_unlimited_link_sends_each_batch_at_once(tmp_path: Path) -> None:
    """No limit: a batch (half of BATCH_BYTES of file data, at least) goes in one send_many."""
    framed, end = _send_file(tmp_path, 24 * CHUNK_BYTES, 0)
    assert end == 1000.0 and framed.sends <= 24 * CHUNK_BYTES // (BATCH_BYTES // 2) + 1


def test_a_deltas_chunks_follow_the_limit(tmp_path: Path) -> None:
    """A delta's chunks are sized by the limit, as a whole file's are (before: 1 MiB each, 8 s of
    a 1 Mbit/s link at line rate), and carry the delta as it was written."""
    (tmp_path / "f").write_bytes(b"new")
    delta_file = tmp_path / "d.part0"
    delta = os.urandom(3 * CHUNK_BYTES)  # a finished delta of literal data
    delta_file.write_bytes(delta)
    part = DeltaPart(path=delta_file, ok=True)
    part.done.set()
    fd = os.open(tmp_path / "f", os.O_RDONLY)
    try:
        build = DeltaBuild(
            key=delta_file, stat=os.fstat(fd), parts=[part], fd=fd, ok=True, new_hash=b"h" * 16
        )
        build.done.set()
        options = ops.SendOptions(bandwidth=TokenBucket.from_mbit(1))
        with open(delta_file, "rb") as f:
            chunks = [
                m
                for m in ops._delta_messages(
                    tmp_path, "f", 1, b"b" * 16, b"", fd, build, [f], options
                )
                if isinstance(m, FileChunk)
            ]
    finally:
        os.close(fd)
    assert (
        max(len(c.data) for c in chunks) <= options.bandwidth.chunk_bytes(CHUNK_BYTES) == 16 * 1024
    )
    assert [c.offset for c in chunks] == list(range(0, len(delta), 16 * 1024))
    assert b"".join(c.data for c in chunks) == delta


# --- Cutting a chunk for a hop under a lower limit (recoding.split_chunk) ---


@pytest.mark.parametrize(
    ("offset", "size"),
    [(0, CHUNK_BYTES), (3 * CHUNK_BYTES, CHUNK_BYTES), (300_000, 200_000), (0, 70_000)],
    ids=["whole chunk", "resume point", "a delta's, unaligned", "a delta part's first"],
)
@pytest.mark.parametrize("codec", [Plain(), Zstd(3)], ids=["plain", "zstd"])
def test_a_cut_chunk_keeps_its_data_offsets_and_boundaries(
    offset: int, size: int, codec: Codec
) -> None:
    """The pieces carry the same bytes at the offsets that follow each other (what the receiver
    checks), start where the chunk did (a delta part's 0 included), end on multiples of the
    piece size (so every CHUNK_BYTES boundary, a resume point, stays one), in `codec`."""
    data = os.urandom(size).translate(bytes(i & 0x0F for i in range(256)))  # zstd halves it
    codec_id, payload = encode_chunk(
        data, Zstd(1)
    )  # a parent hop's zstd: more than a piece on the wire
    pieces = recoding.split_chunk(
        FileChunk(seq=1, offset=offset, data=payload, codec=codec_id), 16 * 1024, codec
    )
    assert b"".join(decode_chunk(p.codec, p.data) for p in pieces) == data
    assert pieces[0].offset == offset and all(len(p.data) <= 16 * 1024 for p in pieces)
    ends = [p.offset + len(decode_chunk(p.codec, p.data)) for p in pieces]
    assert [p.offset for p in pieces[1:]] == ends[:-1] and all(
        e % (16 * 1024) == 0 for e in ends[:-1]
    )
    assert {p.codec for p in pieces} == {codec.ID}


def test_a_chunk_that_fits_or_does_not_decode_goes_as_it_came() -> None:
    small = FileChunk(seq=1, offset=0, data=b"x" * 100)
    corrupt = FileChunk(seq=1, offset=0, data=b"not zstd" * 10_000, codec=Zstd.ID)
    assert recoding.split_chunk(small, 16 * 1024, Plain())[0] is small
    assert recoding.split_chunk(corrupt, 16 * 1024, Plain())[0] is corrupt
