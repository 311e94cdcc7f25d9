"""A current agent joining an older master (its refusals have no `code` yet) words them as that
master meant them: they were all "not a relaysync master's refusal"."""

from __future__ import annotations

import json

import pytest

from relaysync.agent._join_refusal import join_refusal
from relaysync.errors import ConfigError, CsrRefused, JoinAnswerRefused, JoinRefused

URL = "https://master:8470"


def _older(detail: str) -> str:
    return json.dumps({"detail": detail})  # FastAPI's HTTPException body


@pytest.mark.parametrize(
    ("status", "detail", "kind", "said"),
    [
        (
            409,
            "server name 'web1' is already used by node ab12 (as 'web1'); choose another name, "
            "or remove that server first",
            ConfigError,
            "refused this agent's name 'web1': server name 'web1' is already used",
        ),
        (
            400,
            "Configuration error: server name 'web 1' must be 1-63 characters of A-Z a-z 0-9 . _ -",
            ConfigError,
            "refused this agent's name 'web1': server name 'web 1' must be",
        ),
        (400, "Authentication error: the CSR's key must be Ed25519", CsrRefused, "Ed25519"),
        (403, str(JoinRefused("the token expired")), JoinRefused, "the token expired"),
    ],
)
def test_an_older_masters_refusals_are_worded_as_it_meant_them(
    status: int, detail: str, kind: type[Exception], said: str
) -> None:
    refusal = join_refusal(URL, "web1", status, _older(detail))
    assert type(refusal) is kind, refusal
    assert said in str(refusal)
    assert "not a relaysync master's refusal" not in str(refusal)


def test_a_page_that_is_not_a_masters_answer_is_still_unexpected() -> None:
    refusal = join_refusal(URL, "web1", 409, "<html><body>409 Conflict</body></html>")
    assert isinstance(refusal, JoinAnswerRefused)
    assert "HTTP 409" in str(refusal)
