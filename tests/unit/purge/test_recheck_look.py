"""A recheck's look (purge/recheck.py look_again) against a cache and origins answering as told
(httpx.MockTransport): the cache gone back while every origin serves the confirmed copy is
"back"; any origin that moved on, or that cannot be told, is never "back" (a refresh then would
serve a change not every origin has); a gateway error is not a copy."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

import httpx
import pytest

from relaysync.purge.confirm import Head, Served
from relaysync.purge.drivers import make_driver
from relaysync.purge.recheck import RECHECK_BODY_MAX, look_again
from relaysync.purge.site import CacheSpec
from relaysync.purge.urls import parse_url

pytestmark = pytest.mark.anyio

CACHE, O1, O2 = 9001, 9002, 9003
NEW, OLD, NEWER = b"listing a b", b"listing a", b"listing a b c"
URL = parse_url("http://www.example.com/pub/")


def _seen(body: bytes) -> tuple[Served, ...]:
    digest = hashlib.sha256(body).hexdigest()
    return (Served("identity", 200, digest, Head(200, len(body), "", "")),)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def answers() -> dict[int, tuple[int, bytes]]:
    """What each port answers (status, body); an absent port does not connect."""
    return {CACHE: (200, NEW), O1: (200, NEW), O2: (200, NEW)}


@pytest.fixture
def client(answers: dict[int, tuple[int, bytes]]) -> Iterator[httpx.AsyncClient]:
    def handle(request: httpx.Request) -> httpx.Response:
        port = request.url.port or 80
        if port not in answers:
            raise httpx.ConnectError("refused", request=request)
        status, body = answers[port]
        return httpx.Response(status, content=body)

    yield httpx.AsyncClient(transport=httpx.MockTransport(handle))


async def _look(client: httpx.AsyncClient, origins: list[int], seen: bytes = NEW) -> str:
    driver = make_driver(
        CacheSpec(name="nginx", driver="nginx", address=f"127.0.0.1:{CACHE}"), client
    )
    bases = [f"http://127.0.0.1:{port}" for port in origins]
    return (await look_again(driver, client, bases, URL, _seen(seen))).outcome


async def test_the_confirmed_copy_is_current(client: httpx.AsyncClient) -> None:
    assert await _look(client, [O1, O2]) == "current"


async def test_an_older_copy_while_every_origin_serves_the_confirmed_one_is_back(
    client: httpx.AsyncClient, answers: dict[int, tuple[int, bytes]]
) -> None:
    answers[CACHE] = (200, OLD)
    assert await _look(client, [O1, O2]) == "back"


async def test_one_origin_with_a_newer_change_makes_it_moved(
    client: httpx.AsyncClient, answers: dict[int, tuple[int, bytes]]
) -> None:
    """The first origin still serves the confirmed copy, the second has a newer change that
    the first has not committed: refreshing now could fill the cache from either."""
    answers[CACHE] = (200, OLD)
    answers[O2] = (200, NEWER)
    assert await _look(client, [O1, O2]) == "moved"


async def test_an_origin_that_does_not_answer_tells_nothing(
    client: httpx.AsyncClient, answers: dict[int, tuple[int, bytes]]
) -> None:
    answers[CACHE] = (200, OLD)
    del answers[O2]
    assert await _look(client, [O1, O2]) == "unknown"
    assert await _look(client, []) == "unknown"


async def test_an_origin_body_too_long_to_compare_tells_nothing(
    client: httpx.AsyncClient, answers: dict[int, tuple[int, bytes]]
) -> None:
    """Its first RECHECK_BODY_MAX bytes cannot say it is the confirmed copy (no length here:
    the headers cannot either)."""
    answers[CACHE] = (200, OLD)
    answers[O1] = (200, NEW + b"x" * RECHECK_BODY_MAX)
    seen = NEW + b"x" * RECHECK_BODY_MAX
    driver = make_driver(
        CacheSpec(name="nginx", driver="nginx", address=f"127.0.0.1:{CACHE}"), client
    )
    looks = (Served("identity", 200, hashlib.sha256(seen).hexdigest(), Head(200, None, "", "")),)
    look = await look_again(driver, client, [f"http://127.0.0.1:{O1}"], URL, looks)
    assert look.outcome == "unknown"


async def test_a_gateway_error_from_the_cache_is_not_a_copy(
    client: httpx.AsyncClient, answers: dict[int, tuple[int, bytes]]
) -> None:
    answers[CACHE] = (502, b"bad gateway")
    assert await _look(client, [O1, O2]) == "unknown"


async def test_a_deleted_file_served_again_is_back(
    client: httpx.AsyncClient, answers: dict[int, tuple[int, bytes]]
) -> None:
    """A purge confirmed a 404; a late fetch stored the file again."""
    answers.update({CACHE: (200, OLD), O1: (404, b"gone"), O2: (404, b"gone")})
    driver = make_driver(
        CacheSpec(name="nginx", driver="nginx", address=f"127.0.0.1:{CACHE}"), client
    )
    gone = (Served("identity", 404, "", Head(404, 4, "", "")),)
    bases = [f"http://127.0.0.1:{O1}", f"http://127.0.0.1:{O2}"]
    assert (await look_again(driver, client, bases, URL, gone)).outcome == "back"
    answers[CACHE] = (404, b"gone")
    assert (await look_again(driver, client, bases, URL, gone)).outcome == "current"


@pytest.mark.parametrize("status", [429, 502, 503])
async def test_a_busy_or_failing_origin_or_cache_tells_nothing(
    client: httpx.AsyncClient, answers: dict[int, tuple[int, bytes]], status: int
) -> None:
    answers[CACHE] = (200, OLD)
    answers[O2] = (status, b"busy")
    assert await _look(client, [O1, O2]) == "unknown"
    answers[O2] = (200, NEW)
    answers[CACHE] = (status, b"busy")
    assert await _look(client, [O1, O2]) == "unknown"


async def test_an_origin_is_compared_by_its_body_not_its_own_etag(
    answers: dict[int, tuple[int, bytes]],
) -> None:
    """Origins may give the same bytes another ETag or Last-Modified than the copy the confirm
    saw in the cache: that is not a newer change."""

    def handle(request: httpx.Request) -> httpx.Response:
        port = request.url.port or 80
        status, body = answers[port]
        headers = {
            "ETag": f'"{port}"',
            "Last-Modified": f"Sun, 06 Dec 2026 10:00:{port % 60:02} GMT",
        }
        return httpx.Response(status, content=body, headers=headers)

    client = httpx.AsyncClient(transport=httpx.MockTransport(handle))
    answers[CACHE] = (200, OLD)
    driver = make_driver(
        CacheSpec(name="nginx", driver="nginx", address=f"127.0.0.1:{CACHE}"), client
    )
    digest = hashlib.sha256(NEW).hexdigest()
    looks = (Served("identity", 200, digest, Head(200, len(NEW), '"cache"', "earlier")),)
    bases = [f"http://127.0.0.1:{O1}", f"http://127.0.0.1:{O2}"]
    assert (await look_again(driver, client, bases, URL, looks)).outcome == "back"
