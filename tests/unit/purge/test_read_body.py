"""A driver hashes a compressed answer's decoded body a bounded chunk at a time."""

from __future__ import annotations

import gzip
import hashlib
import tracemalloc
import zlib
from collections.abc import AsyncIterator

import httpx
import pytest

from relaysync.purge.drivers._base import read_body, varies_on_encoding

ASYNC = (pytest.mark.anyio, pytest.mark.parametrize("anyio_backend", ["asyncio"]))

BODY = b"2" * (32 << 20) + bytes(range(256)) * 64  # 32 MB of one byte gzips to 32 kB
PEAK_BOUND_BYTES = 8 << 20


def _client(coding: str, data: bytes) -> httpx.AsyncClient:
    def answer(request: httpx.Request) -> httpx.Response:
        async def chunks() -> AsyncIterator[bytes]:
            for i in range(0, len(data), 1 << 16):
                yield data[i : i + (1 << 16)]

        headers = {"Content-Encoding": coding} if coding else {}
        return httpx.Response(200, headers=headers, content=chunks())

    return httpx.AsyncClient(transport=httpx.MockTransport(answer))


async def _hash(coding: str, data: bytes) -> tuple[tuple[str, int], int]:
    async with _client(coding, data) as client, client.stream("GET", "http://cache/") as r:
        tracemalloc.start()
        try:
            got = await read_body(r)
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
    return got, peak


@ASYNC[0]
@ASYNC[1]
@pytest.mark.parametrize(
    ("coding", "data"),
    [
        ("gzip", gzip.compress(BODY, mtime=0)),
        ("deflate", zlib.compress(BODY)),
        ("deflate", zlib.compress(BODY)[2:-4]),  # raw deflate, as some servers send it
        ("", BODY),
    ],
    ids=["gzip", "deflate", "raw-deflate", "identity"],
)
async def test_a_body_is_hashed_decoded_in_bounded_memory(coding: str, data: bytes) -> None:
    """httpx decoded each chunk read whole: 32 kB of gzip became 32 MB at once."""
    got, peak = await _hash(coding, data)
    assert got == (hashlib.sha256(BODY).hexdigest(), len(BODY))
    if coding:
        assert peak < PEAK_BOUND_BYTES, peak


@ASYNC[0]
@ASYNC[1]
async def test_a_body_not_in_its_encoding_is_a_decoding_error() -> None:
    with pytest.raises(httpx.DecodingError):
        await _hash("gzip", b"not gzip at all")


def test_vary_names_accept_encoding_in_any_case_or_list() -> None:
    assert varies_on_encoding(httpx.Headers({"Vary": "Origin, accept-encoding"}))
    assert varies_on_encoding(httpx.Headers([("Vary", "Origin"), ("Vary", "Accept-Encoding")]))
    assert varies_on_encoding(httpx.Headers({"Vary": "*"}))
    assert not varies_on_encoding(httpx.Headers({"Vary": "Origin"}))
    assert not varies_on_encoding(httpx.Headers())
