"""An atomic switch by RENAME_EXCHANGE (`mv --exchange current previous`, coreutils >= 9.5)
keeps both names on the targets, swapped.

Found in review (notes/s34/watch_review.md #2): the source took the old name of each half of
the exchange for gone, and the targets lost one of the two links (or files).
"""

from __future__ import annotations

import ctypes
import errno
import os
from pathlib import Path

import pytest

from tests.integration.conftest import Fleet

pytestmark = pytest.mark.integration

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def _exchange(a: Path, b: Path) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "renameat2"):
        pytest.skip("no renameat2 in this libc")
    if libc.renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE):
        code = ctypes.get_errno()
        if code in (errno.ENOSYS, errno.EINVAL):
            pytest.skip("RENAME_EXCHANGE not supported here")
        raise OSError(code, os.strerror(code))


def test_exchanged_links_and_files_both_stay_on_the_targets(fleet: Fleet) -> None:
    _, src, dsts = fleet.new_mapping()
    for release in ("r1", "r2"):
        (src / "releases" / release).mkdir(parents=True)
        (src / "releases" / release / "index.html").write_text(release)
    os.symlink("releases/r1", src / "current")
    os.symlink("releases/r2", src / "previous")
    (src / "fa").write_text("A")
    (src / "fb").write_text("BBB")
    fleet.wait_converged(src, dsts)
    _exchange(src / "current", src / "previous")
    _exchange(src / "fa", src / "fb")
    fleet.wait_converged(src, dsts)
    assert os.readlink(dsts[0] / "previous") == "releases/r1"
    assert (dsts[1] / "fb").read_text() == "A"
