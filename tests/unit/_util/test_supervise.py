"""The supervision of an agent's long-lived tasks: restart with backoff, fatal at start only."""

from __future__ import annotations

from typing import Any

import anyio
import pytest
from anyio.abc import TaskStatus

from relaysync._util.aio import leaf_error
from relaysync._util.supervise import supervise

TIMEOUT_S = 10


class _Flaky:
    """A component that fails `failures` times after reporting ready, then serves for ever."""

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.starts: list[float] = []
        self.serving = anyio.Event()

    async def serve(self, *, task_status: TaskStatus[int] = anyio.TASK_STATUS_IGNORED) -> None:
        self.starts.append(anyio.current_time())
        task_status.started(len(self.starts))
        if len(self.starts) <= self.failures:
            raise RuntimeError("a bug")
        self.serving.set()
        await anyio.sleep_forever()


def _waits(caplog: pytest.LogCaptureFixture) -> list[float]:
    """The restart delays the supervisor logged, in order."""
    return [float(r.args[1]) for r in caplog.records if "restarting" in r.msg]  # type: ignore[index]


def test_a_task_that_fails_after_it_started_is_started_again_with_growing_waits(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flaky = _Flaky(failures=3)

    async def main() -> Any:
        async with anyio.create_task_group() as tg:
            started = await tg.start(
                lambda task_status: supervise(
                    flaky.serve,
                    name="flaky",
                    min_delay_s=0.02,
                    max_delay_s=5,
                    task_status=task_status,
                )
            )
            with anyio.fail_after(TIMEOUT_S):
                await flaky.serving.wait()
            tg.cancel_scope.cancel()  # cancellation ends the supervision: not a failure
        return started

    assert anyio.run(main) == 1  # the first start's value, passed on once
    assert _waits(caplog) == [0.02, 0.04, 0.08]
    assert all(r.exc_info for r in caplog.records)  # each with its traceback


def test_a_failure_before_the_task_is_ready_is_the_callers() -> None:
    async def broken(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        raise ValueError("a bad listen address")

    with pytest.raises(Exception) as raised:  # noqa: PT011 - in a group or not, as tg.start
        anyio.run(lambda: supervise(broken, name="broken", min_delay_s=0.01, max_delay_s=1))
    assert repr(leaf_error(raised.value)) == "ValueError('a bad listen address')"


# A run that lasts the ceiling is healthy; the failing runs take microseconds, but a busy machine
# can stall one for tens of milliseconds: the ceiling is far above that.
CEILING_S = 1.0


def test_the_wait_starts_over_after_a_healthy_run(caplog: pytest.LogCaptureFixture) -> None:
    runs: list[float] = []
    done = anyio.Event()

    async def serve(*, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        runs.append(anyio.current_time())
        task_status.started()
        if len(runs) == 3:
            await anyio.sleep(CEILING_S)  # as long as the ceiling: healthy
        if len(runs) == 5:
            done.set()
            await anyio.sleep_forever()
        raise RuntimeError("a bug")

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            tg.start_soon(
                lambda: supervise(serve, name="s", min_delay_s=0.01, max_delay_s=CEILING_S)
            )
            with anyio.fail_after(TIMEOUT_S):
                await done.wait()
            tg.cancel_scope.cancel()

    anyio.run(main)
    assert _waits(caplog) == [0.01, 0.02, 0.01, 0.02]  # run 3 lasted the ceiling: healthy
