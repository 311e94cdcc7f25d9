"""How long the event loop stands still while the watcher watches a directory moved into its root.

A Watcher watches an empty root; a directory with --dirs subdirectories, made beside the root, is
moved in (`mv`, one rename) and back out, --runs times. Meanwhile a task on the same event loop
ticks every millisecond; the longest gap between two ticks, less the millisecond, is the time the
loop was blocked (the agent's links and control link share that loop). Also printed: the time
from the rename until the new subtree is watched.

    python bench/watch_stall.py                # 5,000 subdirectories, 5 runs
    python bench/watch_stall.py --dirs 20000

The last line is one JSON object of the figures (milliseconds).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import anyio  # noqa: E402
from _common import emit_json, machine_info, print_machine  # noqa: E402

from relaysync.watch.filters import PathFilter  # noqa: E402
from relaysync.watch.watcher import FsEvent, Watcher  # noqa: E402

TICK_S = 0.001
WAIT_S = 60.0  # bound of every poll


class Ticker:
    """Ticks every TICK_S on the event loop and keeps the longest gap since the last reset."""

    def __init__(self) -> None:
        self.longest_s = 0.0

    async def run(self) -> None:
        while True:
            before = time.perf_counter()
            await anyio.sleep(TICK_S)
            self.longest_s = max(self.longest_s, time.perf_counter() - before - TICK_S)


async def wait_until(check: Callable[[], bool]) -> None:
    with anyio.fail_after(WAIT_S):
        while not check():
            await anyio.sleep(0.005)


async def one_run(
    root: Path, staging: Path, watcher: Watcher, ticker: Ticker, dirs: int
) -> dict[str, float]:
    ticker.longest_s = 0.0
    began = time.perf_counter()
    os.rename(staging / "big", root / "big")
    await wait_until(lambda: len(watcher._wds) >= dirs + 2)
    watched_s = time.perf_counter() - began
    await anyio.sleep(0.2)  # the batch's rescan goes out; ticks show the loop free again
    stall_s = ticker.longest_s
    ticker.longest_s = 0.0
    os.rename(root / "big", staging / "big")  # its watches are removed (rm_watch, no path)
    await wait_until(lambda: len(watcher._wds) == 1)
    await anyio.sleep(0.2)
    out_s = ticker.longest_s
    return {"stall_ms": stall_s * 1000, "watched_ms": watched_s * 1000, "out_ms": out_s * 1000}


async def main(dirs: int, runs: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="watch-stall-") as work:
        root, staging = Path(work, "root"), Path(work, "staging")
        root.mkdir()
        for i in range(dirs):
            (staging / "big" / f"d{i:05d}").mkdir(parents=True)
        send, receive = anyio.create_memory_object_stream[list[FsEvent]](1000)
        watcher, ticker = Watcher(root, PathFilter()), Ticker()

        async def drain() -> None:
            async for _ in receive:
                pass

        results = []
        async with anyio.create_task_group() as tg:
            await tg.start(watcher.serve, send)
            tg.start_soon(drain)
            tg.start_soon(ticker.run)
            for n in range(runs):
                result = await one_run(root, staging, watcher, ticker, dirs)
                print(
                    f"run {n + 1}: loop blocked {result['stall_ms']:.1f} ms, "
                    f"subtree watched after {result['watched_ms']:.1f} ms; "
                    f"moved out: loop blocked {result['out_ms']:.1f} ms"
                )
                results.append(result)
            tg.cancel_scope.cancel()
    stalls = [r["stall_ms"] for r in results]
    watched = [r["watched_ms"] for r in results]
    return {
        "bench": "watch_stall",
        "dirs": dirs,
        "runs": runs,
        "stall_ms_median": round(statistics.median(stalls), 1),
        "stall_ms_max": round(max(stalls), 1),
        "watched_ms_median": round(statistics.median(watched), 1),
        "out_stall_ms_median": round(statistics.median(r["out_ms"] for r in results), 1),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--dirs", type=int, default=5000)
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    info = machine_info()
    print_machine(info)
    emit_json({**anyio.run(main, args.dirs, args.runs), **info})
