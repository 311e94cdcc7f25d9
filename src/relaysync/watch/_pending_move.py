"""A pending move: a MOVED_FROM the watcher read, waiting for its MOVED_TO."""

from __future__ import annotations

import time

__all__ = ["PendingFrom"]


class PendingFrom:
    """A MOVED_FROM waiting for its MOVED_TO, holding its place in the batch."""

    def __init__(self, path: str, is_dir: bool, accepted: bool) -> None:
        self.path = path
        self.is_dir = is_dir
        self.accepted = accepted
        self.paired = False
        # A directory's own watches, and those below it, as they were when its MOVED_FROM was
        # read: the ones that went with it (by descriptor, not by path: a new directory may
        # be at that path by the time the batch ends).
        self.wds: set[int] = set()
        # Those parked at its path by a move earlier in the batch (`TreeWatches._park`): its
        # own if this is the second half of an exchange (`mv --exchange a b`).
        self.parked: set[int] = set()
        self.read_at = time.monotonic()  # pairing is timed from here, not from the last event
