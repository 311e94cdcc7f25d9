"""The top-down comparison against a target's listings: what it sends, and what it takes from a
target that is buggy or hostile (no unbounded paging, no unbounded memory, no frame over the cap)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import anyio
import pytest

from relaysync.constants import MAX_MESSAGE_BYTES
from relaysync.errors import ProtocolError
from relaysync.protocol.framing import decode_payload, encode_frame
from relaysync.protocol.messages import (
    MAX_ERASE_KEEP,
    AnyMessage,
    Delete,
    DigestRequest,
    DirEntry,
    DirListing,
    Erase,
)
from relaysync.transfer import compare
from relaysync.transfer.compare import RequestFn, Work, compare_trees
from relaysync.transfer.receiver import ReceiverSession
from relaysync.transfer.target_folder import TargetFolder
from relaysync.watch.manifest import Entry, Manifest


def _file(path: str, i: int) -> Entry:
    return Entry(path=path, kind="f", size=i, mtime_ns=i, mode=0o644, hash=i.to_bytes(16, "big"))


def _source(tmp_path: Path, entries: list[Entry]) -> Manifest:
    manifest = Manifest(tmp_path / "source.db")
    manifest.put_many(entries)
    return manifest


def _target(folder: TargetFolder, sizes: list[int]) -> RequestFn:
    """A real target's digest replies, each through the wire (encoded, size-checked, decoded)."""
    session = ReceiverSession(folder, "j", lambda *_: None)

    async def request(dirs: Sequence[str], hashes_only: bool, after: str) -> Sequence[DirListing]:
        (reply,) = session.apply_batch(
            [DigestRequest(mapping_id=1, dirs=tuple(dirs), hashes_only=hashes_only, after=after)]
        )
        frame = encode_frame(reply)
        sizes.append(len(frame))
        return decode_payload(frame[4:]).listings  # type: ignore[union-attr]

    return request


def _compare(manifest: Manifest, request: RequestFn) -> list[Work]:
    work: list[Work] = []

    async def emit(items: Sequence[Work]) -> None:
        work.extend(items)

    anyio.run(compare_trees, manifest, request, emit)
    return work


def _messages(work: list[Work]) -> list[AnyMessage]:
    return [w.message for w in work if w.message is not None]


def test_a_huge_directory_is_compared_page_by_page_under_the_frame_cap(
    folder: TargetFolder, tmp_path: Path
) -> None:
    names = [f"big/a-rather-long-file-name-number-{i:07d}.html" for i in range(60_000)]
    folder.manifest.put_many(
        [Entry(path="big", kind="d", mode=0o755)]
        + [_file(n, i) for i, n in enumerate(names)]
        + [_file("big/zz-only-there", 1)]
    )
    source = _source(
        tmp_path,
        [Entry(path="big", kind="d", mode=0o755)]
        + [_file(n, i + (i == 45_000)) for i, n in enumerate(names)],
    )
    sizes: list[int] = []
    work = _compare(source, _target(folder, sizes))
    assert [w.entry.path for w in work if w.entry is not None] == [names[45_000]]
    # 60,000 of our names do not fit one Erase: the name only the target has goes on its own
    assert _messages(work) == [Delete(seq=0, path="big/zz-only-there")]
    assert max(sizes) < MAX_MESSAGE_BYTES / 2


def test_a_small_directory_still_erases_in_one_message(
    folder: TargetFolder, tmp_path: Path
) -> None:
    folder.manifest.put_many([_file("a", 1), _file("b", 2), _file("c", 3)])
    work = _compare(_source(tmp_path, [_file("a", 1), _file("c", 3)]), _target(folder, []))
    assert _messages(work) == [Erase(seq=0, path="", keep=("a", "c"))]


def test_pages_of_names_at_the_name_limit_stay_under_the_frame_cap(
    folder: TargetFolder, tmp_path: Path
) -> None:
    names = [f"{i:07d}".ljust(255, "x") for i in range(21_000)]  # 20,000 of them would be 5.8 MB
    folder.manifest.put_many([_file(n, 1) for n in names])
    sizes: list[int] = []
    work = _compare(
        _source(tmp_path, [_file(n, 1) for n in names[:-1]] + [_file(names[-1], 2)]),
        _target(folder, sizes),
    )
    assert [w.entry.path for w in work if w.entry is not None] == [names[-1]]
    assert len(sizes) >= 4 and max(sizes) < MAX_MESSAGE_BYTES * 0.6


def _hostile(
    pages: list[list[str]], *, more: bool = True, path: str | None = None
) -> tuple[RequestFn, list[str]]:
    """A target whose root differs, then answers listings with `pages` in turn (the last again)."""
    asked: list[str] = []

    async def request(dirs: Sequence[str], hashes_only: bool, after: str) -> list[DirListing]:
        if hashes_only:
            return [
                DirListing(path=d, entries=(), hash=b"x" * 16) for d in dirs
            ]  # differs: descend
        asked.append(after)
        names = pages[min(len(asked), len(pages)) - 1]
        entries = tuple(DirEntry(name=n, kind="f", hash=b"") for n in names)
        return [
            DirListing(path=d if path is None else path, entries=entries, more=more) for d in dirs
        ]

    return request, asked


def _run_against(tmp_path: Path, request: RequestFn) -> None:
    manifest = _source(tmp_path, [_file("a.txt", 1)])

    async def emit(_work: Sequence[Work]) -> None:
        pass

    async def main() -> None:
        with anyio.fail_after(60):
            await compare_trees(manifest, request, emit)

    anyio.run(main)


def test_a_target_that_always_says_more_cannot_keep_the_comparison_going(tmp_path: Path) -> None:
    # the same names again and again (never past `after`), and always "more"
    request, asked = _hostile([[f"n{i:04d}" for i in range(1000)]])
    with pytest.raises(ProtocolError, match="not after"):
        _run_against(tmp_path, request)
    assert asked == ["", "n0999"]


def test_a_page_out_of_order_is_refused(tmp_path: Path) -> None:
    request, _ = _hostile([["b", "a"]], more=False)
    with pytest.raises(ProtocolError, match="not after"):
        _run_against(tmp_path, request)


def test_a_continuation_that_brings_nothing_but_asks_for_more_is_refused(tmp_path: Path) -> None:
    request, asked = _hostile([["a"], []])
    with pytest.raises(ProtocolError, match="no entries"):
        _run_against(tmp_path, request)
    assert asked == ["", "a"]


def test_a_listing_of_another_directory_is_refused(tmp_path: Path) -> None:
    request, _ = _hostile([["a"]], more=False, path="elsewhere")
    with pytest.raises(ProtocolError, match="asked for"):
        _run_against(tmp_path, request)


def test_a_target_paging_on_for_ever_is_cut_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(compare, "MAX_DIR_PAGES", 50)
    counter = iter(range(10**9))

    async def request(dirs: Sequence[str], hashes_only: bool, after: str) -> list[DirListing]:
        if hashes_only:
            return [DirListing(path=d, entries=(), hash=b"x" * 16) for d in dirs]
        names = tuple(
            DirEntry(name=f"n{next(counter):09d}", kind="f", hash=b"") for _ in range(100)
        )
        return [DirListing(path=d, entries=names, more=True) for d in dirs]  # new names each time

    with pytest.raises(ProtocolError, match="over 50 pages"):
        _run_against(tmp_path, request)
    assert next(counter) == 51 * 100  # the 51st page was refused: nothing more was asked for


def test_erase_keep_is_bounded_for_any_directory_the_source_holds(
    tmp_path: Path, folder: TargetFolder
) -> None:
    names = [f"f{i:05d}" for i in range(MAX_ERASE_KEEP + 1)]
    folder.manifest.put_many([_file(n, 1) for n in names[:MAX_ERASE_KEEP]] + [_file("x-extra", 1)])
    work = _compare(
        _source(tmp_path, [_file(n, 1) for n in names[:MAX_ERASE_KEEP]]), _target(folder, [])
    )
    (erase,) = _messages(work)
    assert isinstance(erase, Erase) and len(erase.keep) == MAX_ERASE_KEEP
    decode_payload(encode_frame(erase)[4:])  # the target takes it


def _compare_unreadable(
    manifest: Manifest, request: RequestFn, unreadable: compare.Unreadable
) -> list[Work]:
    work: list[Work] = []

    async def emit(items: Sequence[Work]) -> None:
        work.extend(items)

    async def main() -> None:
        await compare_trees(manifest, request, emit, unreadable=unreadable)

    anyio.run(main)
    return work


def test_unreadable_source_paths_are_neither_erased_nor_compared(
    folder: TargetFolder, tmp_path: Path
) -> None:
    """A file the source could not hash (not in its manifest) and a directory it could not list
    (its entries not in the manifest): before the fix, Erase('', keep=(d, gone.txt...)) and
    Erase('d', keep=()) deleted them on the target."""
    d = Entry(path="d", kind="d", mode=0o755)
    folder.manifest.put_many(
        [_file("a", 1), d, _file("d/f1", 2), _file("locked", 3), _file("old", 4)]
    )
    source = _source(tmp_path, [_file("a", 1), Entry(path="d", kind="d", mode=0o700)])
    unreadable = compare.Unreadable(files=frozenset({"locked"}), dirs=frozenset({"d"}))
    work = _compare_unreadable(source, _target(folder, []), unreadable)
    assert _messages(work) == [Erase(seq=0, path="", keep=("a", "d", "locked"))]
    assert [w for w in work if w.message is None] == []  # nothing sent of d, nor below it


def test_an_unlistable_root_compares_nothing(folder: TargetFolder, tmp_path: Path) -> None:
    folder.manifest.put_many([_file("a", 1), _file("b", 2)])
    unreadable = compare.Unreadable(dirs=frozenset({""}))
    assert _compare_unreadable(_source(tmp_path, []), _target(folder, []), unreadable) == []
