"""Resume through a relay: a spooled file cut down to what a child holds, or completed from ours.

A child lists its partials (path, content hash, bytes held) when a relay's link opens. When the
spool brings that version's FileStart, the child gets it resuming at the first message that
carries a byte it lacks, and the spooled chunks below are dropped (`ResumeCut`).

A relay lists its own partials too, so its parent may resume it at offset k: the spool then
holds that version from k only. A child holding less than k gets the bytes it lacks below k
from the relay's own copy (`open_prefix`, `prefix_messages`): its partial while it is being
received, or the committed file while the manifest says it is that version.

Either way the child hashes its kept prefix again, so its whole-file check covers what it did
not receive this time: bytes that are not that version (our copy replaced meanwhile) end in a
hash mismatch, and the version then goes whole from the relay's tree, never in a corrupt commit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import msgspec

from relaysync._util.fs import open_regular_in
from relaysync.constants import CHUNK_BYTES
from relaysync.errors import TransferError, UnsafePath
from relaysync.protocol.messages import AnyMessage, FileAbort, FileChunk, FileEnd, FileStart
from relaysync.transfer.codec import encode_chunk
from relaysync.transfer.ops import SendOptions
from relaysync.transfer.paths import check_relpath
from relaysync.transfer.target_folder import TargetFolder


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
        self.start, self.held, self.pending, self.at = (
            start,
            min(held, start.size),
            None,
            start.offset,
        )

    def take(self, message: AnyMessage) -> list[AnyMessage]:
        """What to send now of `message`, one of the file being cut (its seq)."""
        if isinstance(message, FileChunk) and message.offset <= self.held:
            self.pending, self.at = (
                message,
                message.offset,
            )  # the one before ended at or below `held`
            return []
        if isinstance(
            message, FileAbort
        ):  # the version is gone; the child's partial stays for nothing
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


def open_prefix(folder: TargetFolder, start: FileStart) -> int | None:
    """A descriptor of our copy of `start`'s version with at least its first `start.offset` bytes.

    Our partial while we receive it (the receiver keeps what is below the offset it resumed at),
    else the committed file if our manifest says it is that version. Once open, a commit or a
    newer version does not change what it reads. Returns None if we hold neither. Each is opened
    below the folder with no link on its way followed: a directory swapped for a link to
    outside never gives a child bytes from outside the folder.
    """
    try:
        check_relpath(start.path)
    except UnsafePath:
        return None
    partial = folder.partial_relpath(start.path, start.expected_hash)
    fd = _open_at_least(folder.root, partial, start.offset)
    if fd is None:
        entry = folder.manifest.get(start.path)
        if entry is not None and entry.hash == start.expected_hash:
            fd = _open_at_least(folder.root, start.path, start.offset)
    return fd


def _open_at_least(root: Path, relpath: str, size: int) -> int | None:
    """Our copy at `relpath` below `root` if it is a regular file of at least `size` bytes
    (no link on its way followed, never a FIFO waited on: this runs in a thread that cannot
    be cancelled)."""
    try:
        opened = open_regular_in(root, relpath)
    except OSError:  # our copy unreadable (EMFILE...): no resume from it, the child gets it whole
        return None
    if opened is None:
        return None
    fd, st = opened
    if st.st_size >= size:
        return fd
    os.close(fd)
    return None


def prefix_messages(
    fd: int, start: FileStart, held: int, options: SendOptions
) -> Iterator[AnyMessage]:
    """`start` resuming at `held`, then our copy's bytes from `held` up to `start.offset` in the
    child's codec; the spooled chunks from `start.offset` on follow them. Runs in a worker thread.

    Raises:
        TransferError: our copy ended early (cut since it was opened): the session ends and that
            version goes whole from our tree next time.
    """
    yield msgspec.structs.replace(start, offset=held)
    offset = held
    while offset < start.offset:
        step = options.bandwidth.chunk_bytes(CHUNK_BYTES)  # a power of two, so `held` is a boundary
        data = os.pread(fd, min(step - offset % step, start.offset - offset), offset)
        if not data:
            options.whole_file_seqs.add(start.seq)
            raise TransferError(
                f"{start.path}: our copy ended at {offset} of the {start.offset} bytes "
                "a child lacks"
            )
        codec_id, payload = encode_chunk(data, options.codec)
        yield FileChunk(seq=start.seq, offset=offset, data=payload, codec=codec_id)
        offset += len(data)
