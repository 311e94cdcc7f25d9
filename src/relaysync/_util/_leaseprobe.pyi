# The compiled read-lease probe (_leaseprobe.c): see relaysync._util.fs.probe_lease.

def probe(dir_fd: int, path: bytes, resolve: int, /) -> tuple[int, ...]:
    """(verdict, dev, ino, size, mtime_s, mtime_ns_part, ctime_s, ctime_ns_part): see the C
    module's docstring (a build before ctime was added answers the first six only)."""
