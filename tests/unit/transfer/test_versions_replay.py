"""The version keeper across replays: a change applied twice (the source resends what the target
applied but had not acknowledged) must keep no copy of the current file as a "previous version",
which would make the prune drop a real one (review D, MUST-FIX 1).

A kill -9 is a forked child killing itself at the named point (a real SIGKILL: nothing after it
runs); the target is then opened again as the agent opens it (stale temps removed, start-up
rescan) and the source's replay applied."""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import pytest

from relaysync.protocol.messages import Ack, AnyMessage, Checkpoint, Delete
from relaysync.transfer import staging
from relaysync.transfer.receiver import ReceiverSession
from relaysync.transfer.target_folder import TargetFolder
from relaysync.transfer.versions import VersionKeeper, versions_dir_for
from relaysync.watch.filters import PathFilter
from relaysync.watch.manifest import Manifest
from relaysync.watch.recorder import ChangeRecorder
from relaysync.watch.watcher import FsEvent
from tests.unit.transfer._target_helpers import T0
from tests.unit.transfer._target_helpers import small_file as _small

CHILD_TIMEOUT_S = 60


def _open(tmp_path: Path, keep: int) -> TargetFolder:
    """The target folder as agent/_target_role.py `_open_target` opens it at start-up."""
    root, state = tmp_path / "root", tmp_path / "state"
    root.mkdir(exist_ok=True)
    state.mkdir(exist_ok=True)
    folder = TargetFolder(
        mapping_id=1,
        source_node="src",
        root=root,
        manifest=Manifest(state / "manifest.db"),
        durable=False,  # a kill -9 loses nothing the page cache holds
        keep_versions=keep,
    )
    staging.clean_stale_temps(root, keep=folder.partial_files())
    recorder = ChangeRecorder(
        root, folder.manifest, PathFilter((), (), root=root), hard_links=False, policy=folder.policy
    )
    recorder.detect_and_apply([FsEvent(kind="rescan", path="")])
    return folder


@contextlib.contextmanager
def _session(tmp_path: Path, keep: int) -> Iterator[ReceiverSession]:
    folder = _open(tmp_path, keep)
    session = ReceiverSession(folder, "j", lambda *_: None)
    session.sender_resends_renames = session.keeps_applied_before_refusal = True
    try:
        yield session
    finally:
        session.close()
        folder.manifest.close()


def _apply(tmp_path: Path, keep: int, ops: Sequence[AnyMessage], last: int) -> None:
    """One agent session applying `ops` up to the Checkpoint `last`, acknowledged."""
    with _session(tmp_path, keep) as s:
        assert s.apply_batch([*ops, Checkpoint(seq=last)]) == [Ack(mapping_id=1, watermark=last)]


def _killed_while(
    tmp_path: Path, keep: int, ops: Sequence[AnyMessage], last: int, arm: Callable[[], None]
) -> None:
    """Apply `ops` in a forked agent session that `arm` has kill itself (-9) at some point."""
    pid = os.fork()
    if pid == 0:  # never returns into pytest
        try:
            arm()
            with _session(tmp_path, keep) as s:
                s.apply_batch([*ops, Checkpoint(seq=last)])
        finally:
            os._exit(3)  # not killed: the test fails on the exit status
    deadline = time.monotonic() + CHILD_TIMEOUT_S
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0:
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("the agent session did not end")
        time.sleep(0.01)
    assert os.waitstatus_to_exitcode(done[1]) == -signal.SIGKILL


def _kill_after(owner: type, name: str, calls: int = 1) -> Callable[[], None]:
    """What arms a kill -9 right after the `calls`-th return of `owner.name`."""

    def arm() -> None:
        real = getattr(owner, name)
        count = [0]

        def wrapped(*args: object, **kwargs: object) -> object:
            result = real(*args, **kwargs)
            count[0] += 1
            if count[0] == calls:
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        setattr(owner, name, wrapped)

    return arm


def _kept(tmp_path: Path, rel: str) -> list[bytes]:
    """The content of the versions kept of `rel`, oldest first."""
    vdir = versions_dir_for(tmp_path / "root")
    return [p.read_bytes() for p in sorted(vdir.glob(f"{rel}@*"))]


@pytest.mark.parametrize("keep", [1, 3])
def test_a_write_replayed_after_a_kill_past_its_renames_keeps_the_previous_version(
    tmp_path: Path, keep: int
) -> None:
    """kill -9 after the batch's renames, before the manifest and the watermark: the source sends
    the write again. The old code kept the file already in place (v1) as a version of itself, and
    the prune dropped v0: with keep=1 the only backup was lost, with keep=3 a slot was wasted."""
    _apply(tmp_path, keep, [_small(1, "x", b"version 0")], 1)
    v1 = _small(2, "x", b"version 1", mtime_ns=T0 + 1)
    _killed_while(tmp_path, keep, [v1], 2, _kill_after(staging.CommitBatch, "commit"))
    assert (tmp_path / "root" / "x").read_bytes() == b"version 1"
    assert _kept(tmp_path, "x") == [b"version 0"]
    _apply(tmp_path, keep, [v1], 2)  # the replay
    assert (tmp_path / "root" / "x").read_bytes() == b"version 1"
    assert _kept(tmp_path, "x") == [b"version 0"]


def test_a_write_replayed_after_a_flush_and_a_dropped_link_keeps_the_previous_version(
    tmp_path: Path,
) -> None:
    """A session commits every 256 staged files (`_stage`), and the link drops before the next
    Checkpoint: the watermark stays before them and the source sends them all again. No kill:
    the manifest holds the new versions already. The old code kept each as its own version."""
    paths = [f"f{i:03d}" for i in range(257)]
    _apply(tmp_path, 1, [_small(i + 1, p, b"v0 " + p.encode()) for i, p in enumerate(paths)], 257)
    v1 = [_small(258 + i, p, b"v1 " + p.encode(), mtime_ns=T0 + 1) for i, p in enumerate(paths)]
    with _session(tmp_path, 1) as s:
        assert s.apply_batch(v1) == []  # no Checkpoint: the link drops here
        assert s.watermark == 257
    assert (tmp_path / "root" / "f000").read_bytes() == b"v1 f000"  # committed by the flush
    _apply(tmp_path, 1, v1, 514)
    for p in paths:
        assert _kept(tmp_path, p) == [b"v0 " + p.encode()], p


def test_a_batch_killed_between_a_keep_and_its_rename_loses_no_version(tmp_path: Path) -> None:
    """kill -9 after the keeper kept b's old version, before b's rename (a was renamed already):
    on the replay a holds its new version (nothing replaced: nothing kept) and b still is the
    newest version kept (kept again, the old code's prune dropped b's v0 for it with keep=2)."""
    keep = 2
    _apply(tmp_path, keep, [_small(1, "a", b"a0"), _small(2, "b", b"b0")], 2)
    _apply(tmp_path, keep, [_small(3, "a", b"a1", T0 + 1), _small(4, "b", b"b1", T0 + 1)], 4)
    batch = [_small(5, "a", b"a2", T0 + 2), _small(6, "b", b"b2", T0 + 2)]
    _killed_while(tmp_path, keep, batch, 6, _kill_after(VersionKeeper, "save", calls=2))
    assert (tmp_path / "root" / "a").read_bytes() == b"a2"
    assert (tmp_path / "root" / "b").read_bytes() == b"b1"
    _apply(tmp_path, keep, batch, 6)
    assert (tmp_path / "root" / "b").read_bytes() == b"b2"
    assert _kept(tmp_path, "a") == [b"a0", b"a1"]
    assert _kept(tmp_path, "b") == [b"b0", b"b1"]


def test_a_delete_replayed_after_a_kill_past_its_keep_loses_no_version(tmp_path: Path) -> None:
    """kill -9 after a Delete kept the file, before it removed it: the replay keeps it again
    (the same inode), and the old code's prune dropped the real previous version (keep=2)."""
    keep = 2
    _apply(tmp_path, keep, [_small(1, "x", b"version 0")], 1)
    _apply(tmp_path, keep, [_small(2, "x", b"version 1", T0 + 1)], 2)
    delete = Delete(seq=3, path="x")
    _killed_while(tmp_path, keep, [delete], 3, _kill_after(VersionKeeper, "save"))
    assert (tmp_path / "root" / "x").exists()
    _apply(tmp_path, keep, [delete], 3)
    assert not (tmp_path / "root" / "x").exists()
    assert _kept(tmp_path, "x") == [b"version 0", b"version 1"]
