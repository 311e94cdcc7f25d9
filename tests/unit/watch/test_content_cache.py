"""ContentCache: small files' bytes as read to hash, kept for the links of their mapping, by
(mapping, path) and version, under one budget per agent; an entry goes once every link took
it, or when it is too old (a link that is down must not pin memory)."""

from __future__ import annotations

from relaysync.watch.content_cache import (
    ENTRY_OVERHEAD_BYTES,
    ContentCache,
    Kept,
    MappingContent,
)

COST = ENTRY_OVERHEAD_BYTES  # what an entry is charged besides its content


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def kept(data: bytes, digest: bytes = b"h1") -> Kept:
    return Kept(digest=digest, data=data, mode=0o644, mtime_ns=1)


def test_an_entry_goes_once_every_link_took_it() -> None:
    cache = ContentCache()
    cache.keep((1, "a"), kept(b"abc"), readers=2)
    assert cache.take((1, "a"), b"h1") == kept(b"abc")
    assert cache.size_bytes == 3 + COST
    assert cache.take((1, "a"), b"h1") == kept(b"abc")
    assert cache.take((1, "a"), b"h1") is None
    assert cache.size_bytes == 0


def test_another_version_is_not_given_and_a_newer_one_replaces_the_old() -> None:
    cache = ContentCache()
    cache.keep((1, "a"), kept(b"old", b"h1"), readers=1)
    assert cache.take((1, "a"), b"h2") is None  # the record is of another version
    cache.keep((1, "a"), kept(b"newer", b"h2"), readers=1)
    assert cache.size_bytes == 5 + COST
    assert cache.take((1, "a"), b"h1") is None
    assert cache.take((1, "a"), b"h2") == kept(b"newer", b"h2")


def test_nothing_is_kept_past_the_budget_nor_above_the_file_limit() -> None:
    cache = ContentCache(budget_bytes=2 * COST + 10, max_file_bytes=6)
    cache.keep((1, "a"), kept(b"123456"), readers=1)
    cache.keep((1, "b"), kept(b"123456"), readers=1)  # would make 12 bytes: not kept
    cache.keep((1, "c"), kept(b"1234567"), readers=1)  # above the file limit
    assert cache.size_bytes == 6 + COST
    assert cache.take((1, "b"), b"h1") is None and cache.take((1, "c"), b"h1") is None
    assert not cache.wants(7) and cache.wants(6)


def test_entries_no_link_took_expire_and_free_the_budget() -> None:
    clock = Clock()
    cache = ContentCache(budget_bytes=COST + 10, max_age_s=60, clock=clock)
    cache.keep((1, "a"), kept(b"123456"), readers=1)
    clock.now = 61
    cache.keep((1, "b"), kept(b"123456"), readers=1)  # room again: "a" expired
    assert cache.take((1, "a"), b"h1") is None
    assert cache.take((1, "b"), b"h1") is not None
    cache.keep((1, "c"), kept(b"1"), readers=1)
    clock.now = 200
    assert cache.take((1, "c"), b"h1") is None  # a take expires too: memory is given back
    assert cache.size_bytes == 0


def test_mappings_share_the_budget_but_not_their_paths() -> None:
    cache = ContentCache()
    one = MappingContent(cache, 1, lambda: 1)
    two = MappingContent(cache, 2, lambda: 0)  # no link: nothing kept for it
    one.keep("a", kept(b"one"))
    two.keep("a", kept(b"two"))
    assert two.take("a", b"h1") is None
    assert one.take("a", b"h1") == kept(b"one")


def test_empty_files_are_charged_too() -> None:
    """Counted by content alone, 200,000 empty files held 90 MiB at a "size" of 0 (review)."""
    cache = ContentCache(budget_bytes=10 * COST)
    for i in range(20):
        cache.keep((1, f"empty-{i}"), kept(b""), readers=1)
    assert cache.size_bytes == 10 * COST
    assert cache.take((1, "empty-10"), b"h1") is None


def test_a_stopped_mappings_entries_and_old_ones_go_without_a_keep_or_take() -> None:
    clock = Clock()
    cache = ContentCache(max_age_s=60, clock=clock)
    one, two = MappingContent(cache, 1, lambda: 1), MappingContent(cache, 2, lambda: 1)
    one.keep("a", kept(b"one"))
    two.keep("a", kept(b"two"))
    one.forget()
    assert one.take("a", b"h1") is None and cache.size_bytes == 3 + COST
    clock.now = 61
    two.expire()  # an idle agent gives the memory back (the source calls it periodically)
    assert cache.size_bytes == 0


def test_while_full_entries_some_link_took_make_room_first() -> None:
    """A link down (or an older peer, or a delta) never takes: the entries the other links took
    held the cache full, and every new file went back to a disk read (review)."""
    cache = ContentCache(budget_bytes=2 * (COST + 1))
    cache.keep((1, "a"), kept(b"a"), readers=2)
    cache.keep((1, "b"), kept(b"b"), readers=2)
    cache.keep((1, "c"), kept(b"c"), readers=2)  # full, nothing taken: not kept
    assert cache.take((1, "c"), b"h1") is None
    assert cache.take((1, "a"), b"h1") is not None  # one link of two took it
    cache.keep((1, "c"), kept(b"c"), readers=2)  # room made by "a", not by "b"
    assert cache.take((1, "a"), b"h1") is None
    assert cache.take((1, "b"), b"h1") is not None and cache.take((1, "c"), b"h1") is not None


def test_forgetting_a_mapping_leaves_the_others() -> None:
    cache = ContentCache()
    for mapping in (1, 2):
        for i in range(3):
            cache.keep((mapping, f"f{i}"), kept(b"x"), readers=1)
    cache.forget(1)
    assert cache.size_bytes == 3 * (1 + COST)
    assert [cache.take((2, f"f{i}"), b"h1") is not None for i in range(3)] == [True] * 3
    assert cache.size_bytes == 0
