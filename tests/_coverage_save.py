"""An xdist worker saves its coverage data when its session ends, not only at its exit.

`scripts/test` measures the workers through coverage's `patch = subprocess`, which saves a
process's data at exit. xdist kills a worker still running 10 s after its session ended (its
EXIT_TIMEOUT), and a killed worker's data was lost whole: stop 31's CI lost one worker of three
(coverage 95 % -> 89 %, every module run in that worker's tests shown as barely run). Saved here,
only what runs after the session (unconfigure, shutdown) can be lost.
"""

from __future__ import annotations

import pytest


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    if not hasattr(session.config, "workeroutput"):  # not an xdist worker: it exits by itself
        return
    try:
        import coverage
    except ImportError:
        return
    cov = coverage.Coverage.current()
    if cov is not None:
        cov.save()
