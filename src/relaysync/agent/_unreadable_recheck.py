"""Source files a scan found there but unreadable: looked at again, with backoff, until they can be.

A file the agent cannot read (mode 000 and the agent not root, a bad sector, no file descriptor
left) cannot be hashed, so no change of it can be journaled. It is not gone either: a scan that
took it for gone would delete it on every target. So no change is recorded for it (the manifest
and the targets keep the version they have), a warning says which file and why, and it is looked
at again after UNREADABLE_RETRY_MIN_S, doubling to UNREADABLE_RETRY_MAX_S, until it is readable
(its change is journaled then, with no new write needed) or gone.
"""

from __future__ import annotations

import errno
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import NoReturn

import anyio

from relaysync.constants import UNREADABLE_RETRY_MAX_S, UNREADABLE_RETRY_MIN_S
from relaysync.errors import SourceReadError
from relaysync.watch.watcher import FsEvent

logger = logging.getLogger(__name__)

WARN_FILES = 20  # unreadable files named one by one per scan; the others are counted
RecordFn = Callable[[Sequence[FsEvent]], Awaitable[object]]


class UnreadableRecheck:
    """The unreadable files of one source folder (see the module doc)."""

    def __init__(self, root: object, clock: Callable[[], float] = time.monotonic) -> None:
        self._root = root
        self._clock = clock
        self._files: dict[str, tuple[int, float]] = {}  # path -> (attempts, when due)

    def __contains__(self, path: str) -> bool:
        return path in self._files

    def failed(self, errors: Sequence[SourceReadError]) -> None:
        """These files could not be read to hash: look at them again later. A warning each, up
        to WARN_FILES per call (out of descriptors, a whole scan fails: one line says how many)."""
        for i, err in enumerate(errors):
            path = str(err.args[0])
            attempts = self._files.get(path, (0, 0.0))[0] + 1
            wait_s = min(UNREADABLE_RETRY_MIN_S * 2 ** (attempts - 1), UNREADABLE_RETRY_MAX_S)
            self._files[path] = (attempts, self._clock() + wait_s)
            if i == WARN_FILES:
                logger.warning(
                    "cannot read %s more files in source %s, will look again: %s",
                    len(errors) - WARN_FILES,
                    self._root,
                    err,
                )
            if i >= WARN_FILES:
                continue
            logger.warning(
                "cannot read %s in source %s (%s), will look again in %.0f s: %s",
                path,
                self._root,
                errno.errorcode.get(err.code or 0, err.code),
                wait_s,
                err,
            )

    async def serve(self, record: RecordFn) -> NoReturn:
        """Look at the files due again, through `record` (the source's detect and journal)."""
        while True:
            due = [t for _, t in self._files.values()]
            wait_s = min([*due, self._clock() + UNREADABLE_RETRY_MIN_S]) - self._clock()
            await anyio.sleep(max(wait_s, 0.0))
            await self.recheck_once(record)

    async def recheck_once(self, record: RecordFn) -> None:
        """Record the files due again: those read now (or gone) are done with; those still not
        readable are noted again by `failed`, with a longer wait."""
        now = self._clock()
        due = [p for p, (_, at) in self._files.items() if at <= now]
        if not due:
            return
        await record([FsEvent(kind="attr", path=p) for p in due])
        for path in due:
            if self._files.get(path, (0, now + 1))[1] <= now:  # not failed again
                del self._files[path]
