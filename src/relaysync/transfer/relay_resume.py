"""Resume through a relay: a spooled file cut down to what a child already holds.

A child lists its partials (path, content hash, bytes held) when a relay's link opens. When the
spool brings that version's FileStart, the child gets it resuming at the first message that
carries a byte it lacks, and the spooled chunks below are dropped (`ResumeCut`). The child hashes
its kept prefix again, so its whole-file check covers what it did not receive this time.
"""

from __future__ import annotations

from dataclasses import dataclass

import msgspec

from relaysync.protocol.messages import AnyMessage, FileAbort, FileChunk, FileEnd, FileStart


@dataclass
class ResumeCut:
    """A spooled file being cut to what the child lacks (it holds the first `held` bytes).

    The FileStart is held back until the chunk that holds byte `held` shows where to resume.
    Chunks differ in size (a bandwidth limit's smaller messages; the last one), and an encoded
    chunk's length says nothing of its data's, so they are told apart by offsets alone: the last
    chunk starting at or below `held` is kept until the next one's offset (or FileEnd) shows
    whether it ends past `held`. Chunks that end at or below it are dropped. The child then
    resumes at a chunk's start, never past what it holds (its receiver cuts its partial there).
    """

    start: FileStart | None = None
    held: int = 0
    pending: FileChunk | None = None  # the last chunk starting at or below `held`
    at: int = 0  # where the child resumes if the file went on now

    @property
    def seq(self) -> int:
        return self.start.seq if self.start is not None else -1

    def begin(self, start: FileStart, held: int) -> None:
        self.start, self.held, self.pending, self.at = start, min(held, start.size), None, start.offset

    def take(self, message: AnyMessage) -> list[AnyMessage]:
        """What to send now of `message`, one of the file being cut (its seq)."""
        if isinstance(message, FileChunk) and message.offset <= self.held:
            self.pending, self.at = message, message.offset  # the one before ended at or below `held`
            return []
        if isinstance(message, FileAbort):  # the version is gone; the child's partial stays for nothing
            self.clear()
            return [message]
        if isinstance(message, FileEnd) and self.start is not None and self.start.size <= self.held:
            self.pending, self.at = None, self.start.size  # the child holds every byte
        return [*self.flush(), message]

    def flush(self) -> list[AnyMessage]:
        """The held-back FileStart, resuming at `at`, and the chunk holding byte `held`; the cut ends."""
        start, pending, at = self.start, self.pending, self.at
        self.clear()
        if start is None:
            return []
        if at != start.offset:
            start = msgspec.structs.replace(start, offset=at)
        return [start] if pending is None else [start, pending]

    def clear(self) -> None:
        self.start, self.pending = None, None
