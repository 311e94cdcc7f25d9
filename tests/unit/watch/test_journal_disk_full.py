"""A journal append that fails part-way on a full disk leaves nothing behind: the next append,
once there is space, gets the next seq, and the journal reads and reopens.

Found in review (notes/s34/watch_review.md #5): a small batch's frames stayed in the segment
file's Python buffer; the cleanup's truncate() flushed first, failed as the write had, and never
truncated; the leftovers went out with the next append: seq 11 twice, and a journal that would
not reopen (JournalCorrupt). The full disk is RLIMIT_FSIZE in a child process (EFBIG after a
partial write, as ENOSPC): the test process's own files are not limited.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

from relaysync.watch.journal import Journal

_CHILD = textwrap.dedent(
    """
    import resource, signal, sys
    from pathlib import Path
    from relaysync.watch.changes import PendingChange
    from relaysync.watch.journal import Journal

    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # EFBIG, not a signal, past the limit
    directory = Path(sys.argv[1])
    journal = Journal(directory, fsync=True)
    journal.append([PendingChange(op="write", path=f"f{i}") for i in range(10)])
    segment = next(directory.glob("*.seg"))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (segment.stat().st_size + 30, hard))  # full
    try:
        journal.append([PendingChange(op="write", path="big" + "x" * 200)])
    except OSError:
        print("append failed")
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))  # space freed
    journal.append([PendingChange(op="write", path="after")])
    print([(r.seq, r.path) for r in journal.read(0)][-2:])
    journal.close()
    """
)


def test_an_append_failed_on_a_full_disk_leaves_no_frame_behind(tmp_path: Path) -> None:
    directory = tmp_path / "journal"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, "-c", _CHILD, str(directory)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["append failed", "[(10, 'f9'), (11, 'after')]"]
    journal = Journal(directory, fsync=True)  # reopens: no torn or repeated frame
    try:
        assert [(r.seq, r.path) for r in journal.read(0)][-2:] == [(10, "f9"), (11, "after")]
        assert journal.last_seq == 11
    finally:
        journal.close()
