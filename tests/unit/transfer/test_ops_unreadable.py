"""A source file that is there but cannot be opened is a SourceReadError, never "gone" (no ops).

Real errnos, not injected: EMFILE from a process out of file descriptors (RLIMIT_NOFILE lowered
in a child process), and "gone" kept as it was for what really is gone.
"""

from __future__ import annotations

import errno
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from relaysync.protocol.messages import FileEnd, FileStart, SmallFile
from relaysync.transfer import ops

# Run in a child: its descriptors are used up to a low limit, then the file is sent.
_OUT_OF_FDS = textwrap.dedent(
    """
    import os, resource, sys
    from pathlib import Path
    from relaysync.transfer import ops
    root = Path(sys.argv[1])
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
    held = []
    try:
        while True:
            held.append(os.open(os.devnull, os.O_RDONLY))
    except OSError:
        pass
    try:
        out = list(ops.iter_file_messages(root, "f.txt", 3))
    except Exception as exc:
        print("raised", type(exc).__name__, getattr(exc, "code", None), exc)
    else:
        print("sent", len(out))
    """
)


def test_out_of_file_descriptors_is_a_read_error_not_a_gone_file(tmp_path: Path) -> None:
    """Before the fix, EMFILE read as "gone": no ops at all, and the change was skipped."""
    (tmp_path / "f.txt").write_text("x")
    run = subprocess.run(
        [sys.executable, "-c", _OUT_OF_FDS, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    words = run.stdout.split()
    assert words[:3] == ["raised", "SourceReadError", str(errno.EMFILE)], run.stdout + run.stderr
    assert "f.txt" in run.stdout and "open-file limit" in run.stdout


def test_gone_and_not_regular_are_still_no_ops(tmp_path: Path) -> None:
    (tmp_path / "dir").mkdir()
    (tmp_path / "link").symlink_to("dir")
    for path in ("nothing", "dir", "link/f", "dir/f/g"):
        assert list(ops.iter_file_messages(tmp_path, path, 1)) == [], path


def test_an_unreadable_path_on_the_way_raises(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """EACCES from openat2 (or the walk) raises, with the path, the errno's text and the fix."""
    from relaysync._util import fs
    from relaysync.errors import SourceReadError

    (tmp_path / "f.txt").write_text("x")

    def refuse(*_args: object, **_kwargs: object) -> int:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(fs._openat2, "openat2", refuse)
    monkeypatch.setattr(fs, "open_for_read", refuse)
    with pytest.raises(SourceReadError) as caught:
        list(ops.iter_file_messages(tmp_path, "f.txt", 1))
    assert caught.value.code == errno.EACCES
    assert str(caught.value) == (
        "Cannot read 'f.txt' on the source: Permission denied. Fix its permissions: the agent's"
        " user must be able to read it. relaysync retries it until it can."
    )
    monkeypatch.undo()
    sent = list(ops.iter_file_messages(tmp_path, "f.txt", 1))
    assert isinstance(sent[0], SmallFile | FileStart) and not isinstance(sent[-1], FileStart)
    assert isinstance(sent[-1], SmallFile | FileEnd)
