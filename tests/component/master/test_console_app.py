"""The console as the master's app serves it: its files without a token and with strict headers,
/api/whoami for its login, and the text-only discipline of its modules."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from tests.component.master._app import ADMIN_HEADERS, admin_app

from relaysync.master.store import Store
from relaysync.ui import CONSOLE_HEADERS, STATIC_DIR


@pytest.fixture
def anonymous(tmp_path: Path) -> Iterator[TestClient]:
    store = Store(f"sqlite:///{tmp_path / 'master.db'}")
    store.migrate()
    try:
        with TestClient(admin_app(store, tmp_path)) as client:
            yield client
    finally:
        store.close()


@pytest.mark.parametrize(
    ("path", "status", "content_type"),
    [
        ("/", 200, "text/html"),
        ("/ui/console.js", 200, "javascript"),
        ("/ui/console.css", 200, "text/css"),
        ("/ui/missing.js", 404, ""),
    ],
)
def test_console_files_need_no_token_and_carry_the_headers(
    anonymous: TestClient, path: str, status: int, content_type: str
) -> None:
    r = anonymous.get(path)
    assert r.status_code == status
    assert content_type in r.headers.get("content-type", "")
    for name, value in CONSOLE_HEADERS:
        assert r.headers.get_list(name) == [value]


def test_the_api_keeps_its_own_headers(anonymous: TestClient) -> None:
    admin = TestClient(anonymous.app, headers=ADMIN_HEADERS)
    for path in ("/openapi.json", "/api/health"):
        r = admin.get(path)
        assert r.status_code == 200
        assert "content-security-policy" not in r.headers


@pytest.mark.parametrize("path", ["/docs", "/redoc", "/docs/oauth2-redirect"])
def test_no_swagger_or_redoc_page_shares_the_consoles_origin(
    anonymous: TestClient, path: str
) -> None:
    """Was: FastAPI's /docs and /redoc pages, whose scripts came from cdn.jsdelivr.net
    (swagger-ui-dist@5, unpinned, no integrity check), ran on the console's origin, where the
    console keeps its token in sessionStorage: any script there could read it."""
    r = anonymous.get(path)
    assert r.status_code == 404
    assert "cdn.jsdelivr.net" not in r.text


def test_whoami_tells_the_scope(anonymous: TestClient) -> None:
    assert anonymous.get("/api/whoami").status_code == 401
    assert anonymous.get("/api/whoami", headers=ADMIN_HEADERS).json() == {
        "id": "admin",
        "scope": "admin",
    }
    created = anonymous.post(
        "/api/tokens/api", json={"name": "dash", "scope": "read"}, headers=ADMIN_HEADERS
    ).json()
    read = {"Authorization": f"Bearer {created['token']}"}
    assert anonymous.get("/api/whoami", headers=read).json() == {
        "id": f"api:{created['id']}",
        "scope": "read",
    }


def test_every_file_the_page_names_is_shipped() -> None:
    page = (STATIC_DIR / "index.html").read_text()
    named = re.findall(r'(?:src|href)="/ui/([^"]+)"', page)
    modules = [
        m
        for js in STATIC_DIR.glob("*.js")
        for m in re.findall(r'from "\./([^"]+)"', js.read_text())
    ]
    assert named and modules
    for name in named + modules:
        assert (STATIC_DIR / name).is_file(), name


# What would parse a string as HTML or code: the console renders API values as text only.
UNSAFE_SINKS = re.compile(
    r"innerHTML|outerHTML|insertAdjacentHTML|document\.write|\beval\(|new Function|"
    r"setAttribute\(\s*[\"']on|\.style\.cssText|createContextualFragment"
)


def test_the_modules_use_no_html_sink() -> None:
    for path in [*STATIC_DIR.glob("*.js"), STATIC_DIR / "index.html"]:
        found = UNSAFE_SINKS.findall(path.read_text())
        assert found == [], f"{path.name}: {found}"
    assert "<script>" not in (STATIC_DIR / "index.html").read_text()  # no inline script
    assert " style=" not in (STATIC_DIR / "index.html").read_text()  # no inline style
