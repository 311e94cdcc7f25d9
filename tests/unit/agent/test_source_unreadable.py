"""A source file that is there but cannot be read to hash: never journaled as deleted, no stop of
its mapping, looked at again until it can be read, and then journaled with no new write.

The real case: a file of mode 000 read by a process without CAP_DAC_OVERRIDE (as the agent run
by a non-root user is), in a child process run with those capabilities dropped (`setpriv`).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import anyio
import pytest

from relaysync.agent.source import SourceMapping
from relaysync.protocol.messages import MappingSpec
from relaysync.watch.watcher import FsEvent

BOUND_S = 30.0
_NO_DAC = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]

# In a child without the capabilities that let root read any file: detect a full rescan.
_DETECT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from relaysync.watch.filters import PathFilter
    from relaysync.watch.manifest import Manifest
    from relaysync.watch.recorder import ChangeRecorder
    from relaysync.watch.watcher import FsEvent
    root, db = Path(sys.argv[1]), Path(sys.argv[2])
    recorder = ChangeRecorder(root, Manifest(db), PathFilter((), (), root=root))
    try:
        detection = recorder.detect([FsEvent(kind="rescan", path="")])
    except Exception as exc:
        print("raised", type(exc).__name__, exc)
    else:
        for change in detection.changes:
            print("change", change.op, change.path)
        for err in getattr(detection, "unreadable", ()):
            print("unreadable", err.args[0], err.code)
    """
)


def _no_dac_works(tmp_path: Path) -> bool:
    probe = tmp_path / "probe"
    probe.write_text("x")
    probe.chmod(0)
    if shutil.which("setpriv") is None:
        return False
    run = subprocess.run([*_NO_DAC, "cat", str(probe)], capture_output=True, check=False)
    return run.returncode != 0 and b"Permission denied" in run.stderr


def _mapping(tmp_path: Path) -> tuple[SourceMapping, Path]:
    root = tmp_path / "src"
    root.mkdir()
    spec = MappingSpec(mapping_id=1, name="m", source_node="n", source_path=str(root), targets=())
    return SourceMapping(spec, tmp_path / "state"), root


def _backdate(*paths: Path) -> None:
    earlier = time.time_ns() - 10 * 10**9  # a scan holds back files written this second
    for p in paths:
        os.utime(p, ns=(earlier, earlier))


def test_a_file_of_mode_000_is_not_deleted_and_does_not_stop_the_scan(tmp_path: Path) -> None:
    """Before the fix, the scan raised PermissionError: the source mapping stopped, and every
    restart's rescan stopped at the same file, so no other change of the folder went out."""
    if not _no_dac_works(tmp_path):
        pytest.skip("setpriv cannot drop CAP_DAC_OVERRIDE here")
    mapping, root = _mapping(tmp_path)
    for name in ("a.txt", "secret.txt"):
        (root / name).write_text(f"first {name}")
    _backdate(root / "a.txt", root / "secret.txt")
    anyio.run(mapping._record, [FsEvent(kind="rescan", path="")])
    mapping.close()
    (root / "secret.txt").write_text("second version, unreadable")
    (root / "secret.txt").chmod(0)
    (root / "a.txt").write_text("second a")
    _backdate(root / "a.txt", root / "secret.txt")

    run = subprocess.run(
        [
            *_NO_DAC,
            sys.executable,
            "-c",
            _DETECT,
            str(root),
            str(tmp_path / "state" / "manifest.db"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = run.stdout.splitlines()
    assert "change write a.txt" in lines, run.stdout + run.stderr  # the others go on
    assert not any(line.startswith("change") and "secret.txt" in line for line in lines)
    assert f"unreadable secret.txt {13}" in lines  # EACCES


def test_an_unreadable_file_is_journaled_once_readable_with_no_new_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Made readable by a cause that leaves no inotify event on it (a group, an ACL on a parent,
    a disk back), the file is journaled by the re-check alone."""
    from relaysync.watch import _file_hash

    mapping, root = _mapping(tmp_path)
    (root / "secret.txt").write_text("the content")
    (root / "other.txt").write_text("readable")
    _backdate(root / "secret.txt", root / "other.txt")
    locked = True
    real_open = _file_hash.open_for_read

    def open_for_read(path: str, *, dir_fd: int | None = None) -> int:
        if locked and os.path.basename(path) == "secret.txt":
            raise PermissionError(13, "Permission denied", path)
        return real_open(path, dir_fd=dir_fd)

    monkeypatch.setattr(_file_hash, "open_for_read", open_for_read)
    # the compiled read opens in C, past this seam (tests/integration/test_unreadable_source.py
    # has a real EACCES go through it)
    monkeypatch.setattr(_file_hash, "_smallread", None)

    def journaled() -> list[tuple[str, str]]:
        return [(r.op, r.path) for r in mapping.journal.read(0)]

    async def main() -> None:
        nonlocal locked
        async with anyio.create_task_group() as tg:
            tg.start_soon(mapping.unreadable.serve, mapping._record)
            await mapping._record([FsEvent(kind="rescan", path="")])
            assert journaled() == [("write", "other.txt")]
            assert "secret.txt" in mapping.unreadable
            locked = False
            with anyio.fail_after(BOUND_S):  # the re-check forgets it once its record returns
                while (
                    "write",
                    "secret.txt",
                ) not in journaled() or "secret.txt" in mapping.unreadable:
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
    finally:
        mapping.close()
    assert journaled() == [("write", "other.txt"), ("write", "secret.txt")]
