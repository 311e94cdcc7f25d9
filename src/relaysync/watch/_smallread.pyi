# The compiled read of a small file (_smallread.c): see relaysync.watch._file_hash.hash_file.
import os

def read_small(
    dir_fd: int, name: str | bytes | os.PathLike[str], size: int, /
) -> tuple[bytes | None, bytes | None, int, int, int, int, int, int, bool]:
    """(digest, data, dev, ino, mode, size, mtime_ns, ctime_ns, unchanged): see the C module's
    docstring."""

def read_many(
    dir_fd: int, names: list[str], sizes: list[int], /
) -> list[tuple[bytes | None, bytes | None, int, int, int, int, int, int, bool] | None]:
    """read_small of each name, in one call: None where read_small would raise OSError."""
