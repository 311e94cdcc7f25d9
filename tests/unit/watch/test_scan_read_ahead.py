"""A scan reads a directory's small files ahead, many in one compiled call (watch/_smallread.c,
`TreeScan._read_ahead`): the same entries and kept contents as one read per file, in bounded
parts, only the files it hashes, and what changed between the listing and the read is read as
a one-file read would."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
import xxhash
from tests._compiled import built

from relaysync.constants import SMALL_FILE_BYTES
from relaysync.watch import _file_hash, scanner
from relaysync.watch.content_cache import ContentCache, MappingContent
from relaysync.watch.filters import PathFilter
from relaysync.watch.manifest import Manifest
from relaysync.watch.scanner import scan


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[str, int]]:
    """The compiled calls a scan makes: ("many", files) or ("one", 1)."""
    real = built(_file_hash._smallread, "relaysync.watch._smallread")
    made: list[tuple[str, int]] = []

    class Counting:
        @staticmethod
        def read_many(dir_fd: int, names: list[str], sizes: list[int]) -> list[object]:
            made.append(("many", len(names)))
            return real.read_many(dir_fd, names, sizes)

        @staticmethod
        def read_small(dir_fd: int, name: str, size: int) -> object:
            made.append(("one", 1))
            return real.read_small(dir_fd, name, size)

    monkeypatch.setattr(_file_hash, "_smallread", Counting)
    return made


def _entries(root: Path, manifest: Manifest) -> dict[str, tuple[str, int, bytes]]:
    return {
        c.path: (c.entry.kind, c.entry.size, c.entry.hash)
        for c in scan(root, manifest, PathFilter()).out
        if c.entry is not None
    }


def test_a_directory_is_read_in_parts_of_bounded_files_and_bytes(
    tmp_path: Path, manifest: Manifest, calls: list[tuple[str, int]]
) -> None:
    root = tmp_path / "src"
    (root / "many").mkdir(parents=True)
    (root / "wide").mkdir()
    contents = {}
    for i in range(600):  # 600 files: parts of READ_AHEAD_FILES (256)
        contents[f"many/f{i:03}"] = os.urandom(100 + i)
    for i in range(40):  # 40 x 60 KiB = 2.4 MiB: parts of about READ_AHEAD_BYTES (1 MiB)
        contents[f"wide/w{i:02}"] = os.urandom(60 * 1024)
    contents["big"] = os.urandom(SMALL_FILE_BYTES + 1)  # above the small-file limit
    contents["empty"] = b""
    for path, data in contents.items():
        (root / path).write_bytes(data)
    (root / "link").symlink_to("big")

    found = _entries(root, manifest)
    assert {p: found[p][2] for p in contents} == {
        p: xxhash.xxh3_128_digest(d) for p, d in contents.items()
    }
    assert found["link"][0] == "l" and found["many"][0] == "d"
    # root: `empty` (`big` is read in blocks, the link not at all); many: 256 + 256 + 88; wide:
    # 18 files pass 1 MiB (18 x 60 KiB), then 18 and 4
    assert sorted(calls) == sorted(
        [("many", 1), ("many", 256), ("many", 256), ("many", 88)]
        + [("many", 18), ("many", 18), ("many", 4)]
    )


def test_only_the_files_a_scan_hashes_are_read_ahead(
    tmp_path: Path, manifest: Manifest, calls: list[tuple[str, int]]
) -> None:
    root = tmp_path / "src"
    root.mkdir()
    for i in range(5):
        (root / f"f{i}").write_bytes(b"x" * i)
    manifest.put_many([c.entry for c in scan(root, manifest, PathFilter()).out if c.entry])
    calls.clear()
    assert scan(root, manifest, PathFilter()).out == []
    assert calls == []  # nothing changed: nothing read
    (root / "f3").write_bytes(b"changed")
    assert [c.path for c in scan(root, manifest, PathFilter()).out] == ["f3"]
    assert calls == [("many", 1)]


@pytest.mark.parametrize("becomes", ["gone", "fifo", "larger", "replaced"])
def test_a_file_changed_between_the_listing_and_the_read_ahead_is_read_as_one_read_would(
    tmp_path: Path, manifest: Manifest, calls: list[tuple[str, int]], becomes: str
) -> None:
    """Gone (the part's read fails for it alone), a FIFO (not read, not waited on: gone),
    larger than listed (read again in blocks, whole), or another file of the same size renamed
    over it (hashed, but not kept under the listed one's stat): the rest of the part is read as
    usual."""
    root = tmp_path / "src"
    root.mkdir()
    for name in ("a", "b", "c"):
        (root / name).write_bytes(name.encode() * 100)
    real_list = scanner.TreeScan._list_dir

    def listed_then_changed(self: scanner.TreeScan, dir_rel: str, dir_fd: int) -> object:
        on_disk = real_list(self, dir_rel, dir_fd)
        (root / "b").unlink()
        if becomes == "fifo":
            os.mkfifo(root / "b")
        elif becomes == "larger":
            (root / "b").write_bytes(b"B" * 5000)
        elif becomes == "replaced":
            (root / "b.new").write_bytes(b"S" * 100)
            os.chmod(root / "b.new", 0o600)
            os.rename(root / "b.new", root / "b")
        return on_disk

    cache = MappingContent(ContentCache(), 1, lambda: 1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(scanner.TreeScan, "_list_dir", listed_then_changed)
        out = scan(root, manifest, PathFilter(), cache=cache).out
    found = {c.path: c.entry for c in out if c.entry is not None}
    assert set(found) == ({"a", "c"} if becomes in ("gone", "fifo") else {"a", "b", "c"})
    for name in ("a", "c"):
        entry = found[name]
        assert entry.hash == xxhash.xxh3_128_digest(name.encode() * 100)
        kept = cache.take(name, entry.hash)
        assert kept is not None and kept.data == name.encode() * 100
    if becomes in ("larger", "replaced"):
        content = b"B" * 5000 if becomes == "larger" else b"S" * 100
        assert found["b"].hash == xxhash.xxh3_128_digest(content)
        # not the file listed: not kept under its stat, read from disk when sent
        assert cache.take("b", found["b"].hash) is None
    assert calls[0] == ("many", 3)


class _Faked:
    """A compiled read that answers as the real one, but for what a test changes."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.real = built(_file_hash._smallread, "relaysync.watch._smallread")
        self.failing: dict[str, int] = {}  # name: the errno its reads fail with
        self.torn: set[str] = set()  # names whose file changed while read ahead
        monkeypatch.setattr(_file_hash, "_smallread", self)

    def read_many(self, dir_fd: int, names: list[str], sizes: list[int]) -> list[object]:
        got = self.real.read_many(dir_fd, names, sizes)
        for i, name in enumerate(names):
            if name in self.failing:
                got[i] = None
            elif name in self.torn and got[i] is not None:
                got[i] = (*got[i][:8], False)  # `unchanged`: False
        return got

    def read_small(self, dir_fd: int, name: str, size: int) -> object:
        if name in self.failing:
            raise OSError(self.failing[name], os.strerror(self.failing[name]), name)
        return self.real.read_small(dir_fd, name, size)


@pytest.mark.parametrize("code", [errno.EACCES, errno.EIO, errno.EMFILE])
def test_a_file_the_read_ahead_cannot_read_is_unreadable_not_gone(
    tmp_path: Path, manifest: Manifest, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    """Its read fails in the part (None), again alone: a SourceReadError with its errno, looked
    at again later, never taken for a delete; the rest of the part is read."""
    faked = _Faked(monkeypatch)
    faked.failing["b"] = code
    root = tmp_path / "src"
    root.mkdir()
    for name in ("a", "b", "c"):
        (root / name).write_bytes(name.encode())
    result = scan(root, manifest, PathFilter())
    assert [c.path for c in result.out] == ["a", "c"]
    assert [(e.path, e.code) for e in result.unreadable] == [("b", code)]


def test_a_file_that_changed_while_it_was_read_ahead_is_hashed_but_not_kept(
    tmp_path: Path, manifest: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its second fstat differed (a write in the middle of the read): the bytes may be torn,
    so the link reads the file again when it sends it."""
    faked = _Faked(monkeypatch)
    faked.torn.add("b")
    root = tmp_path / "src"
    root.mkdir()
    for name in ("a", "b"):
        (root / name).write_bytes(name.encode() * 10)
    cache = MappingContent(ContentCache(), 1, lambda: 1)
    found = {c.path: c.entry for c in scan(root, manifest, PathFilter(), cache=cache).out}
    assert all(e is not None for e in found.values())
    assert cache.take("a", found["a"].hash) is not None  # type: ignore[union-attr]
    assert cache.take("b", found["b"].hash) is None  # type: ignore[union-attr]
