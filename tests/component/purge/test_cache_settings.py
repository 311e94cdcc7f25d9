"""A cache's purge settings that cannot go into an HTTP request (a header name that is no token,
a control character in a header value, a path template with spaces or line breaks) are refused
when the site is saved; one stored before that check is a configuration error at purge time
(purge_refused, kept for the fix), not an unreachable cache retried for ever without a word."""

from __future__ import annotations

from typing import Any

import pytest
from tests.component.purge.conftest import Harness

from relaysync.errors import ConfigError

pytestmark = pytest.mark.anyio

BAD = [
    ({"headers": {"X Bad": "1"}}, "header name 'X Bad'"),
    ({"headers": {"X-A: b": "1"}}, "header name 'X-A: b'"),
    ({"headers": {"X-Token": "abc\x00def"}}, "header 'X-Token'"),
    ({"headers": {"X-Token": "abc\x0bdef"}}, "header 'X-Token'"),
    ({"headers": {"X-Token": "line\r\nX-Injected: 1"}}, "header 'X-Token'"),
    ({"path_template": "{path} HTTP/1.1\r\nX-Injected: 1\r\n\r\nGET /x"}, "path_template"),
    ({"path_template": "/purge {path}"}, "path_template"),
    ({"path_template": "purge?u={url}"}, "path_template"),  # neither / nor a placeholder first
    ({"path_template": "/purge?u={uri}"}, "placeholders are {path}, {host}, {url}"),
]


@pytest.fixture
def purger_options() -> dict[str, Any]:
    return {"probe_min_s": 0.05, "probe_max_s": 0.5, "refused_probe_s": 0.2}


@pytest.mark.parametrize(("extra", "named"), BAD)
async def test_a_setting_no_request_can_carry_is_refused_at_save(
    harness: Harness, extra: dict[str, Any], named: str
) -> None:
    cache = {"name": "cdn", "driver": "http", "address": "127.0.0.1:9", **extra}
    with pytest.raises(ConfigError) as caught:
        harness.store.update_site(harness.site.name, caches=[cache])
    assert "'cdn'" in str(caught.value) and named in str(caught.value), caught.value


async def test_good_settings_are_kept_as_given(harness: Harness) -> None:
    cache = {
        "name": "cdn",
        "driver": "http",
        "address": "127.0.0.1:9",
        "path_template": "{path}?host={host}&u={url}",
        "headers": {"X-Token": "a b\tc", "Fastly-Soft-Purge": "1"},
    }
    harness.store.update_site(harness.site.name, caches=[cache])
    [stored] = harness.store.get_site(harness.site.name).caches
    assert stored.path_template == cache["path_template"]
    assert dict(stored.headers) == cache["headers"]


async def test_a_stored_header_h11_will_not_send_is_a_refusal(harness: Harness) -> None:
    """A row saved before the check: the request cannot be sent (h11 LocalProtocolError, an
    httpx TransportError). It was taken for an unreachable cache: no event, retried for ever."""
    nginx = harness.farm.caches["nginx"]
    cache = {"name": "bad", "driver": "http", "address": nginx.address, "headers": {"X Bad": "1"}}
    assert "headers" in await harness.refused_at_purge(cache)  # says what to check
