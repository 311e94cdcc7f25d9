"""A spool release retried at every batch on a full disk is logged once until it works again
(a drain of 400 batches logged 756 warnings, two per batch), then that it works."""

from __future__ import annotations

import errno
import logging

import pytest

from relaysync.master._joblog_parts import OnceWhileFailing


def test_a_failure_repeated_at_every_batch_is_logged_once_until_it_works(
    caplog: pytest.LogCaptureFixture,
) -> None:
    failures = OnceWhileFailing("releasing written reports from the spool")
    full = OSError(errno.ENOSPC, "No space left on device")
    with caplog.at_level(logging.WARNING, logger="relaysync.master.joblog"):
        for _ in range(400):
            failures.failed(full)
        failures.worked()
        failures.worked()
        failures.failed(full)
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 3, messages
    assert "failed, will retry" in messages[0] and "No space left" in messages[0]
    assert "works again (400 failures)" in messages[1]
    assert "failed, will retry" in messages[2]
