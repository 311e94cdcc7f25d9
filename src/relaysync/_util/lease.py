"""The read-lease probe: whether a file below a root is open for writing by any process now, and
what it is at an instant when none has it so (a source's hot files, agent/source.py)."""

from __future__ import annotations

import logging
import os
from typing import NamedTuple

from relaysync._util import fs

try:
    from relaysync._util import _leaseprobe
except ImportError:  # not built (setup.py build_ext): no probe, hot files held as before
    _leaseprobe = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

__all__ = ["LeaseProbe", "ScannedFile", "closed_as_scanned", "probe_lease"]

_VERDICTS: dict[int, bool | None] = {0: False, 1: True, 2: None}  # as _leaseprobe.probe's
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1  # the manifest's mtime_ns column (mtime_ns_of)
RawProbe = tuple[int, ...]  # _leaseprobe.probe's answer: 8 numbers (6 from a build before ctime)


class LeaseProbe(NamedTuple):
    """What a read lease told of a file. `writing`: True if some process has it open (or
    mapped) for writing; False if none had, and then the rest is its fstat taken while the
    lease was held; None if that cannot be told (gone, not a regular file, unreadable, no lease
    may be taken: not the owner and no CAP_LEASE, a file system without leases)."""

    writing: bool | None
    dev: int = 0
    ino: int = 0
    size: int = 0
    mtime_ns: int = 0  # clamped to a signed 64-bit number as the manifest's
    ctime_ns: int = -1  # -1: not told (not closed, or a build of the probe before ctime)


class ScannedFile(NamedTuple):
    """A file as a scan saw it: its manifest entry's inode number, size, mtime_ns and ctime_ns
    (0: not known, and then it is never told complete)."""

    ino: int
    size: int
    mtime_ns: int
    ctime_ns: int


_UNKNOWN = LeaseProbe(writing=None)
_told_unbuilt: list[bool] = []  # the missing C probe is logged once per process
_told_old_build: list[bool] = []  # and a build before ctime


def closed_as_scanned(root: str | os.PathLike[str], relpath: str, scanned: ScannedFile) -> bool:
    """Whether the file `relpath` below `root` is complete, as far as the kernel can tell: it is
    not empty, no process has it open for writing, and it is the very file a scan saw (same
    inode on `root`'s file system, same size, mtime and ctime: a rewrite that kept the size and
    set the mtime back, `cp -p` or `rsync --inplace -t` between the scan and the probe, moved
    the ctime). False if any of that is not so or cannot be told: the caller holds the file as
    maybe still being written.

    Not empty, because a file just created is visible, empty, before its creator's descriptor
    counts as a writer (inside open(O_CREAT)): a lease is granted in that window. Data, though,
    can only be written through a descriptor that counts as a writer from the moment it exists,
    so a non-empty file that takes a lease has no writer. One exception: `truncate -s N path`
    makes a non-empty file without a writer (all zeros); it is then shipped as it is, and its
    next write, seen by the watch of its directory (present by the time it was scanned), is
    shipped again: an intermediate version on targets, never a lost one.

    A file on another file system mounted below `root` (its st_dev differs) is never "closed".
    """
    if scanned.size <= 0 or scanned.ino == 0 or scanned.ctime_ns <= 0:
        return False
    if "\0" in relpath or not _built():
        return False
    probe, root_dev = _probe_from_root(root, relpath)
    return (
        probe.writing is False
        and probe.size > 0
        and (probe.dev, probe.ino, probe.size, probe.mtime_ns, probe.ctime_ns)
        == (root_dev, scanned.ino, scanned.size, scanned.mtime_ns, scanned.ctime_ns)
    )


def probe_lease(root: str | os.PathLike[str], relpath: str) -> LeaseProbe:
    """The read-lease probe of the regular file `relpath` below `root` (never raises).

    The file is opened as `fs.open_regular_in` opens it (no component followed, nothing out of
    `root`; O_NONBLOCK: a FIFO or someone else's lease never makes it wait), from `root`'s held
    descriptor within `fs.root_held`. The lease is taken, the file fstat'ed, the lease dropped
    and the file closed in one C call with the GIL released (`_leaseprobe`): a writer opening
    the file meanwhile waits microseconds, never for another thread of the agent to give the GIL
    back. A lease break signals SIGURG, which is ignored, not SIGIO, whose default would end the
    agent.
    """
    if "\0" in relpath or not _built():
        return _UNKNOWN
    return _probe_from_root(root, relpath)[0]


def _built() -> bool:
    """Whether the C probe is there. A probe in Python would hold the lease until its thread got
    the GIL back (a writer's open waited 1.4 s, measured): without it nothing is probed."""
    if _leaseprobe is not None:
        return True
    if not _told_unbuilt:
        _told_unbuilt.append(True)
        logger.warning(
            "relaysync._util._leaseprobe is not built (python setup.py build_ext --inplace, "
            "or reinstall): files a scan finds in new directories are held hot_file_s as before"
        )
    return False


def _probe_from_root(root: str | os.PathLike[str], relpath: str) -> tuple[LeaseProbe, int]:
    """`probe_lease`, and the st_dev of the root it started from (-1 if it could not)."""
    held = fs._held_fd(root)
    try:
        root_fd = held if held is not None else os.open(root, fs._ROOT_FLAGS)
    except OSError:
        return _UNKNOWN, -1
    try:
        root_dev = os.fstat(root_fd).st_dev
        return _from_raw(_probe_below(root_fd, relpath)), root_dev
    except OSError:
        return _UNKNOWN, -1
    finally:
        if held is None:
            os.close(root_fd)


def _from_raw(raw: RawProbe) -> LeaseProbe:
    if len(raw) < 8 and not _told_old_build:
        _told_old_build.append(True)
        logger.warning(
            "relaysync._util._leaseprobe is a build from before the ctime check (a checkout "
            "updated without rebuilding it): rebuild it (python setup.py build_ext --inplace, "
            "or reinstall); until then files a scan finds being written are held hot_file_s"
        )
    verdict, dev, ino, size, mtime_s, mtime_ns_part = raw[:6]
    mtime_ns = min(max(mtime_s * 1_000_000_000 + mtime_ns_part, _INT64_MIN), _INT64_MAX)
    ctime_ns = raw[6] * 1_000_000_000 + raw[7] if len(raw) >= 8 and verdict == 0 else -1
    return LeaseProbe(_VERDICTS[verdict], dev, ino, size, mtime_ns, ctime_ns)


def _probe_below(root_fd: int, relpath: str) -> RawProbe:
    """The probe of `relpath` below `root_fd`: one openat2, or where it is missing or
    forbidden, its directory opened by a walk and the file by name from it.

    Raises:
        OSError: the file or a directory on its way could not be opened.
    """
    probe = _leaseprobe.probe
    if fs._openat2_usable:
        try:
            return probe(root_fd, os.fsencode(relpath), fs._RESOLVE)
        except OSError as exc:
            if exc.errno not in fs._UNSUPPORTED:
                raise
    head, _, name = relpath.rpartition("/")
    parent = fs._open_dir_in("", head, root_fd=root_fd)
    try:
        return probe(parent, os.fsencode(name), 0)
    finally:
        os.close(parent)
