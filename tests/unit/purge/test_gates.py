"""A cache's gate: its share of the workers, and the breaker that probes a failing cache."""

from __future__ import annotations

import anyio
import pytest

from relaysync.purge.budget import Budget
from relaysync.purge.gates import Gate


def test_a_gate_admits_up_to_its_limit() -> None:
    gate = Gate(limit=2)
    assert gate.admit(0.0) and gate.admit(0.0)
    assert not gate.admit(0.0)
    gate.release()
    assert gate.admit(0.0)


def test_failures_in_a_row_open_it_to_one_probe_at_a_time() -> None:
    gate = Gate(limit=4, trip_after=3, probe_min_s=1.0, probe_max_s=4.0)
    assert not gate.unreachable(0.0) and not gate.unreachable(0.0)
    assert gate.unreachable(0.0)  # the third opens it
    assert not gate.admit(0.5)  # before the probe time
    assert gate.admit(1.0)  # one probe...
    assert not gate.admit(9.0)  # ...and nothing beside it
    gate.release()
    gate.unreachable(1.0)  # the probe failed: the next waits longer, up to probe_max_s
    assert gate.probe_at == 3.0
    for _ in range(5):
        assert gate.admit(gate.probe_at)
        gate.release()
        gate.unreachable(1.0)
    assert gate.probe_at == 5.0
    assert gate.admit(5.0)
    gate.release()
    assert gate.succeeded()  # it answered: closed, the backlog flows
    assert gate.admit(5.0) and gate.admit(5.0)


def test_the_tries_out_when_it_opens_do_not_push_the_first_probe_back() -> None:
    """One stall of the purger's event loop timed out the 16 tries out on each cache at once:
    the third opened the gate, and each of the 13 after it doubled the probe interval as if a
    probe had failed, to probe_max_s (30 s), past every bound of a test. Only a failed probe
    doubles it now."""
    gate = Gate(limit=16, trip_after=3, probe_min_s=1.0, probe_max_s=30.0)
    for _ in range(16):
        assert gate.admit(0.0)
    for _ in range(16):  # all out before it opened, all failing with it
        gate.unreachable(2.0)
        gate.release()
    assert gate.open and gate.probe_at == 3.0
    assert gate.admit(3.0)  # the probe fails: now it doubles
    gate.unreachable(3.5)
    gate.release()
    assert gate.probe_at == 5.5


def test_a_refusal_opens_it_at_once_and_is_news_once() -> None:
    gate = Gate(limit=4, refused_probe_s=60.0)
    assert gate.refuse(0.0, "403") and not gate.refuse(0.0, "403 again")
    assert not gate.admit(59.0) and gate.admit(60.0)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_budget_grows_with_the_bytes_moved(anyio_backend: str) -> None:
    budget = Budget(15.0, 1_000_000)
    first = budget.scope.deadline
    budget.moved(300_000_000)  # a 300 MB file may take 300 s more
    assert budget.scope.deadline == pytest.approx(first + 300.0)
    assert anyio.current_time() < budget.scope.deadline


@pytest.mark.anyio
async def test_each_request_gets_its_time_and_unused_time_is_not_kept(anyio_backend: str) -> None:
    """nginx's and Squid's items send a request per Accept-Encoding value (27 for nginx): a
    fixed 15 s for the whole item ran out on a loaded machine, try after try. Each request now
    has 5 s from when it is sent, but what one did not use is not banked for a slow drip."""
    budget = Budget(15.0, 1_000_000, per_request_s=5.0)
    first = budget.scope.deadline
    for _ in range(27):
        budget.requested()  # all at once: still 15 s from the start
    assert budget.scope.deadline == pytest.approx(first)
    budget.started -= 100.0  # 100 s in: the base is spent
    budget.requested()
    budget.moved(1_000_000)
    assert budget.scope.deadline == pytest.approx(anyio.current_time() + 5.0 + 1.0, abs=0.5)


def test_gates_that_replace_one_share_its_slots_however_they_interleave() -> None:
    """Two reloads at once replaced one gate twice, and the one kept missed the releases; an
    admission on the old gate after its count was copied left the new one at -1, unable to
    probe. The gates of one cache now share one count."""
    old = Gate(limit=2)
    assert old.admit(0.0) and old.admit(0.0)
    first, second = old.replaced(), old.replaced()  # two reloads at once
    old.release()
    old.release()
    assert (first.in_flight, second.in_flight) == (0, 0) and first.admit(0.0)
    assert old.in_flight == 1  # an admission on any of them counts once, for all
    old.release()
    for _ in range(3):
        second.unreachable(0.0)
    assert second.open and second.can_admit(1e9)  # it probes again


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_big_read_leaves_no_time_to_a_request_that_hangs_after_it(
    anyio_backend: str,
) -> None:
    """The bytes' time was kept for the whole item: a 300 MB body read in a few seconds left a
    later request that hung 5 minutes and more."""
    budget = Budget(15.0, 1_000_000, per_request_s=5.0)
    first = budget.scope.deadline
    budget.requested()
    budget.moved(300_000_000)  # read fast
    budget.requested()  # the next request hangs
    assert budget.scope.deadline == pytest.approx(first, abs=0.5)


def test_timeouts_excused_for_our_loop_stop_being_excused_past_trip_after() -> None:
    """A cache really down while our loop keeps stalling still opens its gate: past
    `trip_after` hold-ups excused (since it last answered) the next ones' timeouts count;
    every timeout of one hold-up is excused alike (many tries out at once)."""
    gate = Gate(limit=16, trip_after=3)
    assert all(gate.excuse(10.0) for _ in range(16))  # one stall, 16 tries out
    assert [gate.excuse(t) for t in (20.0, 30.0, 40.0, 50.0)] == [True, True, False, False]
    assert gate.excuse(30.0)  # a stall excused already
    assert not any(gate.unreachable(0.0) for _ in range(2)) and gate.unreachable(0.0)
    gate.succeeded()
    assert gate.excuse(60.0)
