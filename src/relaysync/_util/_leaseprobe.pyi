# The compiled read-lease probe (_leaseprobe.c): see relaysync._util.fs.probe_lease.

def probe(dir_fd: int, path: bytes, resolve: int, /) -> tuple[int, ...]:
    """(verdict, dev, ino, size, mtime_s, mtime_ns_part, ctime_s, ctime_ns_part): see the C
    module's docstring (a build before ctime was added answers the first six only)."""

def probe_open(fd: int, /) -> tuple[int, ...]:
    """The probe of the regular file open read-only as `fd` (left open): as `probe`'s answer."""
