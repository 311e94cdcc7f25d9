"""A source file that is there but cannot be read when its link sends it (EACCES, EMFILE, EIO),
over a real socket (plain link, in-process agents' parts): it is not taken for gone. The target
records a failed attempt naming it, every other file on the link keeps flowing meanwhile, and
once it can be read it arrives (under its own seq, which resolves the failure) with no new write.

The errno is injected at the one seam below the source's open (`_locked`): as root, EACCES and
EIO cannot be had for real (tests/integration/test_unreadable_source.py gets a real EACCES from
a source agent run without CAP_DAC_OVERRIDE; tests/unit/transfer/test_ops_unreadable.py a real
EMFILE).
"""

from __future__ import annotations

import errno
import os
import ssl
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import anyio
import pytest
from tests.component.agent._pair import TGT, plain_link, source_mapping, target_folder

from relaysync._util import fs
from relaysync.agent.peer_server import PeerServer
from relaysync.agent.source import SourceMapping
from relaysync.protocol.messages import CommitRecord
from relaysync.transfer import unreadable
from relaysync.transfer.target_folder import TargetFolder
from relaysync.watch._fsevent import FsEvent

BOUND_S = 30.0  # every wait below polls for its condition under this bound


@contextmanager
def _locked(names: set[str], code: int) -> Iterator[None]:
    """Opening a file named in `names` (while it is) fails with `code`, as the kernel would say
    it: openat2 (the source's open), or the walk's last open where openat2 is refused."""
    real_openat2, real_open = fs._openat2.openat2, fs.open_for_read

    def openat2(dir_fd: int, path: bytes, flags: int, resolve: int) -> int:
        if os.fsdecode(path) in names:
            raise OSError(code, os.strerror(code), os.fsdecode(path))
        return real_openat2(dir_fd, path, flags, resolve)

    def open_for_read(path: str, *, dir_fd: int | None = None) -> int:
        if os.fspath(path) in names:
            raise OSError(code, os.strerror(code), path)
        return real_open(path, dir_fd=dir_fd)

    fs._openat2.openat2, fs.open_for_read = openat2, open_for_read  # type: ignore[assignment]
    try:
        yield
    finally:
        fs._openat2.openat2, fs.open_for_read = real_openat2, real_open  # type: ignore[assignment]


async def _record(source: SourceMapping, *names: str) -> None:
    """Journal the files as closed after a write (backdated: none is held back as hot)."""
    earlier = time.time_ns() - 10 * 10**9
    for name in names:
        os.utime(source.root / name, ns=(earlier, earlier))
    await source._record([FsEvent(kind="write", path=n) for n in names])


def _server(folder: TargetFolder, reports: list[CommitRecord]) -> PeerServer:
    def reporter(
        _folder: TargetFolder, _journal: str
    ) -> Callable[[int, Sequence[CommitRecord]], None]:
        return lambda _watermark, records: reports.extend(records)

    return PeerServer(
        host="127.0.0.1",
        port=0,
        ctx=ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER),
        node_id=TGT,
        name="t",
        folders=lambda m: folder if m == 1 else None,
        reporter=reporter,
    )


async def _until(what: str, done: Callable[[], bool]) -> None:
    with anyio.fail_after(BOUND_S):
        while not done():
            await anyio.sleep(0.02)


@pytest.mark.parametrize("code", [errno.EACCES, errno.EMFILE, errno.EIO], ids=errno.errorcode.get)
def test_an_unreadable_file_is_retried_not_taken_for_gone_and_others_flow(
    tmp_path: Path, code: int
) -> None:
    """Before the fix, the open's error read as "gone": nothing was sent, nothing said so, and
    the file reached the target only with a later write to it, or the comparison 10 min on."""
    source, folder = source_mapping(tmp_path), target_folder(tmp_path)
    root, tgt = source.root, folder.root
    for name in ("a.txt", "secret.txt"):
        (root / name).write_text(f"content of {name}")
    (tgt / "secret.txt").write_text("the old version")  # it must stay until the new one comes
    anyio.run(_record, source, "a.txt", "secret.txt")
    [secret_seq] = [r.seq for r in source.journal.read(0, 10) if r.path == "secret.txt"]
    reports: list[CommitRecord] = []
    server = _server(folder, reports)
    locked = {"secret.txt"}

    def failed() -> list[CommitRecord]:
        return [r for r in reports if r.path == "secret.txt" and not r.ok]

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(server.serve)
            link = plain_link(source, port)
            tg.start_soon(link.serve)
            await _until("a.txt sent, the failure reported", lambda: bool(failed()))
            await _until("a.txt", lambda: (tgt / "a.txt").exists())
            # the link goes on: a file written after the unreadable one arrives meanwhile
            (root / "b.txt").write_text("written while secret.txt is unreadable")
            await _record(source, "b.txt")
            await _until("b.txt", lambda: (tgt / "b.txt").exists())
            assert (tgt / "secret.txt").read_text() == "the old version"
            assert link.failures == 0  # a file it could not read is no failed hop
            locked.clear()  # the cause is fixed; nothing is written to the file
            await _until(
                "secret.txt",
                lambda: (
                    (tgt / "secret.txt").exists()
                    and any(r.ok and r.path == "secret.txt" for r in reports)
                ),
            )
            tg.cancel_scope.cancel()

    with _locked(locked, code):
        anyio.run(main)

    assert (tgt / "secret.txt").read_text() == "content of secret.txt"
    first = failed()[0]
    assert first.seq == secret_seq and first.op == "write"
    assert os.strerror(code) in first.error and "secret.txt" in first.error
    assert "relaysync retries it" in first.error
    [ok] = [r for r in reports if r.path == "secret.txt" and r.ok]
    assert ok.seq == secret_seq  # the job log's failure for that change is resolved by it


def test_a_comparison_leaves_a_kept_file_to_its_retry_under_its_seq(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A comparison comes while a file that could not be read is kept (and the retry is not due
    yet). Before the fix the comparison sent it as catch-up work, seq 0: the file arrived, but
    the job log's failure of its record (resolved by a commit of that seq only) stayed open for
    good (the CI of e2a0ef3, where the periodic comparison won that race)."""
    monkeypatch.setattr(unreadable, "UNREADABLE_RETRY_MIN_S", 3600.0)  # due only when the
    monkeypatch.setattr(unreadable, "UNREADABLE_RETRY_MAX_S", 3600.0)  # comparison says so
    source, folder = source_mapping(tmp_path), target_folder(tmp_path)
    root, tgt = source.root, folder.root
    (root / "secret.txt").write_text("content of secret.txt")
    anyio.run(_record, source, "secret.txt")
    [secret_seq] = [r.seq for r in source.journal.read(0, 10) if r.path == "secret.txt"]
    reports: list[CommitRecord] = []
    server = _server(folder, reports)
    locked = {"secret.txt"}

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(server.serve)
            link = plain_link(source, port, compare_interval_s=0.05)
            tg.start_soon(link.serve)
            await _until("the failure", lambda: any(not r.ok for r in reports))
            locked.clear()
            await _until("secret.txt", lambda: any(r.ok for r in reports))
            tg.cancel_scope.cancel()

    with _locked(locked, errno.EIO):
        anyio.run(main)
    assert (tgt / "secret.txt").read_text() == "content of secret.txt"
    assert [(r.seq, r.ok) for r in reports if r.path == "secret.txt"] == [
        (secret_seq, False),
        (secret_seq, True),
    ]


@pytest.mark.parametrize("moved", ["p", "dir"])
def test_a_rename_of_a_file_kept_to_read_again_keeps_its_retry(tmp_path: Path, moved: str) -> None:
    """The file (or a directory holding it) renamed while its new version could not be read:
    before the fix the rename dropped the retry, the target's Rename carried the old version to
    the new name, and it stayed there until the comparison 10 min on (/tmp/rev-src2/rename_repro.py)."""
    source, folder = source_mapping(tmp_path), target_folder(tmp_path)
    root, tgt = source.root, folder.root
    (root / "dir").mkdir()
    old, new = ("p", "q") if moved == "p" else ("dir/p", "moved/p")
    locked: set[str] = set()
    server = _server(folder, [])

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(server.serve)
            link = plain_link(source, port)
            tg.start_soon(link.serve)
            (root / old).write_text("v1")
            await _record(source, old)
            await _until("v1", lambda: (tgt / old).exists())
            locked.add(old)
            (root / old).write_text("v2 new content")
            await _record(source, old)
            await _until("kept to read again", lambda: old in link.unreadable)
            locked.clear()
            os.rename(root / moved, root / ("q" if moved == "p" else "moved"))
            await source._record(
                [FsEvent(kind="move", path=moved, new_path="q" if moved == "p" else "moved")]
            )
            await _until(
                "v2 at the new name",
                lambda: (tgt / new).exists() and (tgt / new).read_text() == "v2 new content",
            )
            assert new not in link.unreadable
            tg.cancel_scope.cancel()

    with _locked(locked, errno.EACCES):
        anyio.run(main)
    assert not (tgt / old).exists()


def test_a_retry_that_finds_its_file_renamed_sends_it_at_the_new_name(tmp_path: Path) -> None:
    """The file kept to read again is renamed on the source, and its retry comes due before the
    rename's record is sent (the loop runs due retries first). Before the fix the retry dropped
    it unnoted and the Rename moved the target's version 1 to the new name, where it stayed
    (/tmp/rev-send/repro_retry_then_rename.py)."""
    source, folder = source_mapping(tmp_path), target_folder(tmp_path)
    root, tgt = source.root, folder.root
    locked: set[str] = set()
    server = _server(folder, [])
    v2 = "version 2 -- must reach the target"

    async def main() -> None:
        async with anyio.create_task_group() as tg:
            port = await tg.start(server.serve)
            link = plain_link(source, port, compare_interval_s=3600)
            tg.start_soon(link.serve)
            (root / "page.html").write_text("version 1")
            await _record(source, "page.html")
            await _until("v1", lambda: (tgt / "page.html").exists())
            locked.add("page.html")
            (root / "page.html").write_text(v2)
            await _record(source, "page.html")
            await _until("kept to read again", lambda: "page.html" in link.unreadable)
            locked.clear()
            os.rename(root / "page.html", root / "renamed.html")
            await _until("the retry found it gone", lambda: "page.html" not in link.unreadable)
            await source._record([FsEvent(kind="move", path="page.html", new_path="renamed.html")])
            renamed = tgt / "renamed.html"
            await _until(
                "v2 at the new name", lambda: renamed.exists() and renamed.read_text() == v2
            )
            tg.cancel_scope.cancel()

    with _locked(locked, errno.EIO):
        anyio.run(main)
    assert not (tgt / "page.html").exists()
