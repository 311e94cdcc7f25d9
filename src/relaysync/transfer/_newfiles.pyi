# The compiled write of a small file into a new directory (_newfiles.c): see
# relaysync.transfer.staging.IncomingFile.whole.
import os

def write_whole(
    dir_fd: int, name: str | bytes | os.PathLike[str], mode: int, data: bytes, mtime_ns: int, /
) -> int:
    """Create `name` below `dir_fd` with `mode`, write `data`, set its mtime, close it; a file
    it made is removed again if any step fails. 0, or the errno of the mtime's setting or the
    close; OSError if the create or a write failed."""
