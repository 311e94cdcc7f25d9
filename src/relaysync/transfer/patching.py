"""Applying a librsync delta on a target as it arrives, not after it has all arrived.

The delta's chunks are written into a pipe; librsync's `rs_patch_file` reads that pipe in a
thread of its own and writes the new version into a temp file beside the old one, so patching
overlaps the transfer (and, on the source, the delta's computation). The result is hashed and
checked like any received file before it is committed (staging.py). For a large file whose new
version's hash is known, that temp file is the version's named partial: librsync writes the new
version in order, so what it holds is always a prefix of it, which the next session resumes as a
whole file from its last whole chunk (the whole-file hash still covers that prefix).

Error handling: a corrupt delta makes librsync stop; the next write then fails (the pipe is
closed) or `finish()` raises, both as TransferError, and nothing is committed; a base that cannot
be read (or is cut short meanwhile) raises DeltaBaseUnreadable, for a whole file instead. Resource
handling: `discard()` closes the pipe, waits for the thread and removes the temp file; `close()`
does the same but keeps a named partial on disk; after `stop()` the caller keeps or drops `output`
itself (a full disk cuts a named partial to whole chunks).
"""

from __future__ import annotations

import fcntl
import os
import threading
from pathlib import Path

from relaysync.errors import DeltaBaseUnreadable, TransferError
from relaysync.transfer import _librsync
from relaysync.transfer.staging import PARTIAL_SUFFIX, IncomingFile

PIPE_BYTES = 1024 * 1024  # one chunk fits in the pipe, so a write rarely waits for librsync
_F_SETPIPE_SZ = 1031


class StreamingPatch:
    """A delta being applied to the version open as `base`, one chunk at a time, into a temp
    file beside `final`."""

    def __init__(
        self,
        final: Path,
        *,
        base: int,
        dir_fd: int,
        size: int,
        mode: int,
        mtime_ns: int,
        parts: int = 1,
        partial_of: bytes = b"",
        owner: int = 0,
    ) -> None:
        """`base` is a descriptor of the old version, taken over (closed when the patch ends);
        the output is made in `final`'s directory held open as `dir_fd`: neither is reached by
        a path, so a directory swapped for a link meanwhile is neither read nor written through.
        With `partial_of` (the new version's hash), the output is that version's named partial
        for mapping `owner` (staging.partial_name_for), started afresh; else a random temp file."""
        self.final = final
        self._base = base
        try:
            self.output = _open_output(final, dir_fd, size, mode, mtime_ns, partial_of, owner)
        except BaseException:
            self._close_base()
            raise
        self.temp = self.output.temp
        self.parts = parts  # the delta comes in this many parts, applied one after the other
        self.part = 0
        self.received = 0  # bytes of the current part written so far
        self._error: BaseException | None = None
        self._write_fd = -1
        self._thread: threading.Thread | None = None
        try:
            self._start_part()
        except BaseException:
            self.discard()
            raise

    def _start_part(self) -> None:
        """Start librsync on the next part in a thread of its own. It reads the base through a
        descriptor of its own (a dup of ours, which its FILE* closes; each COPY seeks), never by
        a path: no /proc needed, nothing reached through the tree.

        Raises:
            DeltaBaseUnreadable: no descriptor of the base could be made (EMFILE...).
        """
        try:
            basis = os.dup(self._base)
        except OSError as exc:
            raise DeltaBaseUnreadable(self.final.name, exc.strerror or str(exc)) from exc
        try:
            read_fd, self._write_fd = os.pipe2(os.O_CLOEXEC)
        except BaseException:
            os.close(basis)
            raise
        try:
            fcntl.fcntl(self._write_fd, _F_SETPIPE_SZ, PIPE_BYTES)
        except OSError:  # over /proc/sys/fs/pipe-max-size: the default 64 KiB works, only slower
            pass
        thread = threading.Thread(
            target=self._run, args=(basis, read_fd), name=f"patch {self.final.name}", daemon=True
        )
        try:
            thread.start()
        except BaseException:
            os.close(read_fd)
            os.close(basis)
            raise
        self._thread = thread

    def _run(self, basis: int, read_fd: int) -> None:
        try:
            # Each part's output is appended and hashed as librsync writes it (no re-read at the end).
            _librsync.patch(basis, read_fd, self.output.append)  # closes basis and read_fd
        except BaseException as exc:  # noqa: BLE001 - reported by write() or finish()
            self._error = exc

    def write(self, offset: int, data: bytes) -> None:
        """Feed the next piece of the delta (blocks while librsync catches up); offset 0 after
        data starts the next part.

        Raises:
            TransferError: out of order, more parts than announced, or librsync refused the
            delta (corrupt); DeltaBaseUnreadable: the base could not be read.
        """
        if offset == 0 and self.received:
            self._end_part()
            if self.part + 1 >= self.parts:
                raise TransferError(
                    f"{self.final.name}: more than the {self.parts} delta parts announced"
                )
            self.part += 1
            self.received = 0
            self._start_part()
        if offset != self.received:
            raise TransferError(f"delta chunk at offset {offset}, expected {self.received}")
        view = memoryview(data)
        try:
            while view:
                view = view[os.write(self._write_fd, view) :]
        except BrokenPipeError:
            self.stop()  # waits for the patch thread: its error is set
            # writing the new version failed (a full disk...), or reading the base did
            if isinstance(self._error, OSError | DeltaBaseUnreadable):
                raise self._error from None
            raise TransferError(
                f"{self.final.name}: librsync stopped reading the delta: {self._error}"
            ) from None
        self.received += len(data)

    def finish(self) -> IncomingFile:
        """Wait for librsync to write the last byte; return the new version, hashed, unverified.

        Raises:
            TransferError: librsync refused the delta; DeltaBaseUnreadable: reading the old
            version failed; OSError: writing the new one failed.
        """
        self._end_part()
        self._close_base()
        if self.part + 1 != self.parts:
            raise TransferError(
                f"{self.final.name}: {self.part + 1} of {self.parts} delta parts arrived"
            )
        return self.output

    def _end_part(self) -> None:
        self._stop_part()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        """End the delta and wait for librsync: the output holds what it wrote, and no more comes
        (the base is closed)."""
        self._stop_part()
        self._close_base()

    def _stop_part(self) -> None:
        """End the current part's delta and wait for librsync to finish it."""
        if self._write_fd >= 0:
            os.close(self._write_fd)  # end of the delta: librsync sees EOF
            self._write_fd = -1
        if self._thread is not None:
            self._thread.join()

    def _close_base(self) -> None:
        base, self._base = self._base, -1
        if base >= 0:
            os.close(base)

    def discard(self) -> None:
        self.stop()
        self.output.discard()

    @property
    def resumable(self) -> bool:
        """Whether the output is a named partial (kept by `close`, listed for a resume)."""
        return self.output.temp_name.endswith(PARTIAL_SUFFIX)

    def close(self) -> None:
        """Stop patching; keep the output if it is a named partial (a prefix of the new version,
        however far librsync got), else remove it."""
        self.stop()
        if self.resumable:
            self.output.close()
        else:
            self.output.discard()


def _open_output(
    final: Path, dir_fd: int, size: int, mode: int, mtime_ns: int, partial_of: bytes, owner: int
) -> IncomingFile:
    """The file a patch writes the new version into, in `dir_fd`: the version's named partial
    with `partial_of`, else a temp file of its own."""
    if partial_of:
        return IncomingFile.open_partial(
            final,
            partial_of,
            owner=owner,
            size=size,
            mode=mode,
            mtime_ns=mtime_ns,
            offset=0,
            dir_fd=dir_fd,
        )
    return IncomingFile.open(final, size=size, mode=mode, mtime_ns=mtime_ns, dir_fd=dir_fd)
