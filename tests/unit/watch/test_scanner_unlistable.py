"""A source directory that is there but cannot be listed or entered (mode 000, 0600 or 0100 to an
agent without CAP_DAC_OVERRIDE; EMFILE or EIO opening or listing it) is never read as empty:
nothing below it is recorded (never a delete), the rest of the scan goes on, and the directory
is named in `unreadable` (SourceListError) for the source to rescan later.

Real permissions are read in a child process run with those capabilities dropped (`setpriv`),
as the agent run by a non-root user reads them; the other errnos are injected.
"""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.unit.agent.test_source_unreadable import _NO_DAC, _no_dac_works

from relaysync.errors import SourceListError
from relaysync.watch import scanner
from relaysync.watch.filters import PathFilter
from relaysync.watch.manifest import Manifest
from relaysync.watch.recorder import ChangeRecorder
from relaysync.watch.watcher import FsEvent

# In a child without the capabilities that let root read any directory: detect each event
# (kind:path) on its own, applying what it found, and print what came of it.
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
    for spec in sys.argv[3:]:
        kind, _, path = spec.partition(":")
        try:
            detection = recorder.detect([FsEvent(kind=kind, path=path)])
        except Exception as exc:
            print(spec, "raised", type(exc).__name__, exc)
            continue
        recorder.apply(detection.changes)
        for change in detection.changes:
            print(spec, "change", change.op, change.path)
        for err in getattr(detection, "unreadable", ()):
            print(spec, "unreadable", type(err).__name__, getattr(err, "path", "?"), err.code)
    """
)
EVENTS = ("rescan:", "rescan:d", "rescan:d/sub", "write:d/f", "write:d/sub/g", "write:x/new")


def _tree(tmp_path: Path) -> tuple[Path, Manifest]:
    """A source folder scanned into a manifest: d/f, d/sub/g, x/h."""
    root = tmp_path / "src"
    (root / "d" / "sub").mkdir(parents=True)
    (root / "x").mkdir()
    for rel in ("d/f", "d/sub/g", "x/h"):
        (root / rel).write_text(f"first {rel}")
    manifest = Manifest(tmp_path / "manifest.db")
    ChangeRecorder(root, manifest, PathFilter()).detect_and_apply([FsEvent(kind="rescan", path="")])
    return root, manifest


@pytest.fixture
def restore_modes(tmp_path: Path) -> Iterator[None]:
    yield
    for dirpath, dirnames, _ in os.walk(tmp_path):  # so that pytest can remove the tree
        for name in dirnames:
            os.chmod(os.path.join(dirpath, name), 0o755)


@pytest.mark.parametrize("mode", [0o000, 0o600, 0o100])
def test_a_directory_the_agent_cannot_list_is_kept_not_emptied(
    tmp_path: Path, mode: int, restore_modes: None
) -> None:
    """Before the fix, every scan that met d raised PermissionError out of detect(): the source
    mapping stopped, and every restart's scan stopped there again (no change anywhere went out)."""
    if not _no_dac_works(tmp_path):
        pytest.skip("setpriv cannot drop CAP_DAC_OVERRIDE here")
    root, manifest = _tree(tmp_path)
    manifest.close()
    (root / "d" / "f").write_text("changed while unreadable")
    (root / "d" / "sub" / "g").unlink()
    (root / "d" / "new").write_text("made while unreadable")
    (root / "x" / "new").write_text("elsewhere")
    (root / "d").chmod(mode)

    run = subprocess.run(
        [
            *_NO_DAC,
            sys.executable,
            "-c",
            _DETECT,
            str(root),
            str(tmp_path / "manifest.db"),
            *EVENTS,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    lines = run.stdout.splitlines()
    out = run.stdout + run.stderr
    assert not [line for line in lines if " raised " in line], out
    assert "rescan: change write x/new" in lines, out  # the rest of the scan goes on
    changes = [line.split()[2:] for line in lines if " change " in line]
    assert not [c for c in changes if c[1] == "d" and c[0] != "attr"], out  # d itself: its mode
    assert not [c for c in changes if c[1].startswith("d/")], out  # nothing below: no delete
    assert "rescan: unreadable SourceListError d 13" in lines, out  # EACCES, named
    # each event that must list d: no change, the directory named (with mode 0100, d/sub/g
    # is reached without listing d, and found gone: a write event records no delete)
    for spec in EVENTS[1:4]:
        assert any(line.startswith(f"{spec} unreadable SourceListError d") for line in lines), out

    after = Manifest(tmp_path / "manifest.db")
    try:
        assert after.get("d") is not None
        assert {e.path for e in after.iter_entries("d")} == {"d/f", "d/sub", "d/sub/g"}
    finally:
        after.close()


def _scan(root: Path, manifest: Manifest) -> tuple[set[tuple[str, str]], list[SourceListError]]:
    detection = ChangeRecorder(root, manifest, PathFilter()).detect(
        [FsEvent(kind="rescan", path="")]
    )
    errors = [e for e in detection.unreadable if isinstance(e, SourceListError)]
    return {(c.op, c.path) for c in detection.changes}, errors


def test_emfile_opening_a_directory_keeps_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Out of file descriptors when the scan opens d: before the fix, OSError out of the scan."""
    root, manifest = _tree(tmp_path)
    (root / "d" / "sub" / "g").unlink()
    (root / "x" / "new").write_text("elsewhere")
    real = scanner.open_dir_in

    def open_dir_in(top: Path, reldir: str) -> int:
        if reldir == "d":
            raise OSError(errno.EMFILE, "Too many open files")
        return real(top, reldir)

    monkeypatch.setattr(scanner, "open_dir_in", open_dir_in)
    changes, errors = _scan(root, manifest)
    assert changes == {("write", "x/new")}
    assert [(e.path, e.code) for e in errors] == [("d", errno.EMFILE)]
    assert "open-file limit" in str(errors[0])
    manifest.close()


def test_eio_in_the_middle_of_a_listing_deletes_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A listing that fails after some names (EIO from getdents) must not read the names it did
    not reach as deleted: before the fix, OSError out of the scan."""
    root, manifest = _tree(tmp_path)
    for i in range(5):
        (root / "d" / f"n{i}").write_text("new")
    real = os.scandir

    def scandir(fd: int) -> object:
        it = real(fd)
        if not os.readlink(f"/proc/self/fd/{fd}").endswith("/d"):
            return it
        return _FailingAfterOne(it)

    monkeypatch.setattr(scanner.os, "scandir", scandir)
    changes, errors = _scan(root, manifest)
    assert changes == set()  # neither the names listed (the listing is not trusted) nor deletes
    assert [(e.path, e.code) for e in errors] == [("d", errno.EIO)]
    manifest.close()


class _FailingAfterOne:
    """A scandir iterator whose second read fails with EIO."""

    def __init__(self, it: os.ScandirIterator[str]) -> None:
        self._it = it
        self._given = 0

    def __enter__(self) -> _FailingAfterOne:
        return self

    def __exit__(self, *exc: object) -> None:
        self._it.close()

    def __iter__(self) -> _FailingAfterOne:
        return self

    def __next__(self) -> os.DirEntry[str]:
        self._given += 1
        if self._given > 1:
            raise OSError(errno.EIO, "Input/output error")
        return next(self._it)


def test_the_errors_a_scan_holds_keep_no_traceback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scan of many unreadable files (EMFILE) holds one error per file: before the fix each
    kept its traceback and the OSError behind it (2.6 KB each, 2.6 GB for a million files)."""
    root = tmp_path / "src"
    root.mkdir()
    for i in range(50):
        (root / f"f{i}").write_bytes(b"x")

    def hash_file(
        at: str,
        size: int = -1,
        *,
        dir_fd: int | None = None,
        keep: object = None,
        read: object = None,
    ) -> bytes:
        raise OSError(errno.EMFILE, os.strerror(errno.EMFILE), at)

    monkeypatch.setattr(scanner, "hash_file", hash_file)
    manifest = Manifest(tmp_path / "m.db")
    try:
        result = scanner.scan(root, manifest, PathFilter())
    finally:
        manifest.close()
    assert len(result.unreadable) == 50
    assert {(e.code, e.__traceback__, e.__cause__, e.__context__) for e in result.unreadable} == {
        (errno.EMFILE, None, None, None)
    }
