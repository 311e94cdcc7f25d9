"""An xdist worker's exit: its coverage data saved when its session ends, and a quick shutdown.

`scripts/test` measures the workers through coverage's `patch = subprocess`, which saves a
process's data at its exit. xdist kills a worker still running 10 s after its session ended (its
EXIT_TIMEOUT), and a killed worker's data was lost whole: stop 31's CI lost one worker of three
(coverage 95 % -> 89 %, the modules run in that worker's tests shown as barely run), a run after it
two of three. What held them: pytest's cleanup (`unraisableexception.gc_collect_harder`) runs five
full garbage collections over the worker's heap, 1.9 s each under coverage on a busy machine
(stacks dumped at the end of that run: 9.5 s from the session's end to the exit of the one worker
that made it). So the data is saved here, then the heap collected once (what pytest looks for:
objects whose finalizers raise) and frozen, which makes pytest's later collections cheap.
"""

from __future__ import annotations

import gc

import pytest


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    if not hasattr(session.config, "workeroutput"):  # not an xdist worker: it exits by itself
        return
    try:
        import coverage
    except ImportError:
        pass
    else:
        cov = coverage.Coverage.current()
        if cov is not None:
            cov.save()
    gc.collect()
    gc.freeze()
