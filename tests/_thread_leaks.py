"""A test must not leave a thread running that the interpreter waits for at exit.

Such a thread (a non-daemon thread, or a worker of a ThreadPoolExecutor, which the interpreter
also joins) blocked in a call keeps the pytest-xdist worker from exiting; xdist kills it after 10 s
and every line that worker measured is lost from coverage (stop 31's CI: one worker of three lost,
coverage 95 % -> 89 %). Each such thread is tied to the first test after which it was seen; at the
end of the session the ones still running after a bounded wait fail the session, named with that
test and their stack.
"""

from __future__ import annotations

import sys
import threading
import time
import traceback
import weakref
from collections.abc import Iterator

import pytest

# how long the session's end waits for threads that are about to finish (idle pool workers)
SETTLE_S = 15.0

# by the thread itself: a finished thread's ident is soon reused by a new one
_first_seen: weakref.WeakKeyDictionary[threading.Thread, str] = weakref.WeakKeyDictionary()


def _idle_pool_worker(t: threading.Thread) -> bool:
    """A ThreadPoolExecutor's worker waiting for work (its queue's get is C: `_worker` is the
    innermost Python frame): shutdown wakes it, it does not hold the exit."""
    frame = sys._current_frames().get(t.ident or -1)  # noqa: SLF001
    return (
        frame is not None
        and frame.f_code.co_name == "_worker"
        and frame.f_code.co_filename.endswith("concurrent/futures/thread.py")
    )


def _held_at_exit() -> list[threading.Thread]:
    """Threads other than this one that interpreter shutdown would wait for."""
    from concurrent.futures import thread as futures_thread

    pooled = set(futures_thread._threads_queues)  # noqa: SLF001  # joined at exit
    me = threading.current_thread()
    return [
        t
        for t in threading.enumerate()
        if t is not me
        and t.is_alive()
        and (not _idle_pool_worker(t) if t in pooled else not t.daemon)
    ]


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item) -> Iterator[None]:
    yield
    for t in _held_at_exit():
        _first_seen.setdefault(t, item.nodeid)


def _stack(t: threading.Thread) -> str:
    frame = sys._current_frames().get(t.ident or -1)  # noqa: SLF001
    return "".join(traceback.format_stack(frame)[-8:]) if frame else "(no frame)\n"


def _report() -> str:
    """What holds this process's exit after a bounded wait, or "" when nothing does."""
    deadline = time.monotonic() + SETTLE_S
    left = _held_at_exit()
    for t in left:
        t.join(timeout=max(0.0, deadline - time.monotonic()))
    left = [t for t in left if t in _held_at_exit()]
    if not left:
        return ""
    lines = [f"{len(left)} thread(s) left running would keep a test process from exiting:"]
    for t in left:
        nodeid = _first_seen.get(t, "(not seen after any test)")
        lines.append(f"- {t.name!r}, first seen after {nodeid}; its stack:\n{_stack(t)}")
    return "\n".join(lines)


_LEAKS = pytest.StashKey[list[str]]()


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    config = session.config
    report = _report()
    if hasattr(config, "workeroutput"):  # an xdist worker: its controller reports and fails
        config.workeroutput["leaked_threads"] = report
        return
    if report:
        config.stash.setdefault(_LEAKS, []).append(report)
    if config.stash.get(_LEAKS, []):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """The leaks in a section of the summary, and why the run failed though every test passed."""
    leaks = terminalreporter.config.stash.get(_LEAKS, [])
    if not leaks:
        return
    terminalreporter.section("threads left running", sep="=", red=True)
    for text in leaks:
        terminalreporter.write_line(text)
    terminalreporter.write_line("the run fails: a test left a thread that holds the exit", red=True)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node: object, error: object) -> None:
    """On the xdist controller: keep what a worker found, reported in its sessionfinish."""
    output = getattr(node, "workeroutput", {})
    report = output.get("leaked_threads", "") if isinstance(output, dict) else ""
    if report:
        config = node.config  # type: ignore[attr-defined]
        config.stash.setdefault(_LEAKS, []).append(f"[{node.gateway.id}] {report}")  # type: ignore[attr-defined]
