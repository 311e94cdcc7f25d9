"""The web console in real headless Chromium, against a real master and agents: login, live
watermarks, the incident actions, the logs, and what keeps attacker-chosen file names inert."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import Select

from relaysync.testing.cluster import wait_until
from tests._browser import (
    click,
    element,
    eventually,
    headless_chromium,
    script,
    severe_console_messages,
    text_of,
)
from tests.integration._modes import journaled_ops as _journaled
from tests.integration.conftest import CONVERGE_TIMEOUT_S, Fleet, start_fleet

pytestmark = pytest.mark.integration

ALERT_TIMEOUT_S = 60.0  # the master checks its own figures every few seconds
XSS_NAME = '<img src=x onerror="window.__pwned=1">.html'


@pytest.fixture(scope="session")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[webdriver.Chrome]:
    """One headless Chromium for the whole session, its profile in a temp dir."""
    with headless_chromium(tmp_path_factory.mktemp("chromium") / "profile") as driver:
        yield driver


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    f = start_fleet(tmp_path_factory.mktemp("console"), agents=("src", "t1", "t2"))
    try:
        yield f
    finally:
        f.cluster.stop()


def _admin_token(fleet: Fleet) -> str:
    return (fleet.cluster.master_dir / "admin-token").read_text().strip()


def _api_token(fleet: Fleet, name: str, scope: str) -> dict:
    r = fleet.cluster.api.post("/api/tokens/api", json={"name": name, "scope": scope})
    assert r.status_code == 201, r.text
    return dict(r.json())


def _log_in(driver: webdriver.Chrome, fleet: Fleet, token: str) -> None:
    """A fresh console page (nothing in sessionStorage), then the login form with `token`."""
    driver.get(fleet.cluster.api_url + "/")
    script(driver, "sessionStorage.clear()")
    driver.get(fleet.cluster.api_url + "/")
    field = eventually(
        lambda: element(driver, "#token").is_displayed() and element(driver, "#token"), "login form"
    )
    field.send_keys(token)
    element(driver, "#login-submit").click()


def _logged_in(driver: webdriver.Chrome) -> None:
    eventually(lambda: element(driver, "#app").is_displayed(), "the console after login")


def _new_mapping(fleet: Fleet, files: int = 1, **extra: object) -> tuple[dict, Path, Path]:
    mapping, src, (dst,) = fleet.new_mapping(targets=("t1",), **extra)
    for i in range(files):
        (src / f"f{i}.txt").write_text(f"file {i}")
    fleet.wait_converged(src, [dst])
    return mapping, src, dst


def _status(fleet: Fleet, mapping: dict) -> dict:
    r = fleet.cluster.api.get(f"/api/mappings/{mapping['id']}/status")
    assert r.status_code == 200, r.text
    return dict(r.json()["targets"][0])


def _caught_up(fleet: Fleet, mapping: dict) -> dict:
    """The target's status once the master has its watermark at the source's highest seq."""

    def done() -> dict | None:
        t = _status(fleet, mapping)
        return t if t["lag"] == 0 and t["watermark"] > 0 else None

    return dict(
        wait_until(done, timeout_s=CONVERGE_TIMEOUT_S, what="watermark at the source's seq")
    )


def _target_cell(mapping: dict, column: str, target: str = "t1") -> str:
    return f'[data-mapping="{mapping["name"]}"] [data-target="{target}"] .{column}'


def test_login_refuses_a_bad_token_then_shows_the_fleet(
    browser: webdriver.Chrome, fleet: Fleet
) -> None:
    mapping, _, _ = _new_mapping(fleet)
    _caught_up(fleet, mapping)
    _log_in(browser, fleet, "not-a-token")
    message = eventually(
        lambda: (
            element(browser, "#login-error").is_displayed() and text_of(browser, "#login-error")
        ),
        "the login error",
    )
    assert "Token refused" in message and "invalid token" in message
    assert not element(browser, "#app").is_displayed()

    _log_in(browser, fleet, _admin_token(fleet))
    _logged_in(browser)
    for name in ("src", "t1"):
        eventually(
            lambda n=name: text_of(browser, f'#servers [data-server="{n}"] .state') == "up",
            f"{name} up",
        )
    eventually(lambda: text_of(browser, _target_cell(mapping, "lag")) == "0", "lag 0")
    assert text_of(browser, "#whoami") == "admin (admin)"
    assert script(browser, "return sessionStorage.length") == 1  # the token, in this tab only
    assert fleet.cluster.api_url + "/" == browser.current_url  # never in the URL
    refused = [m for m in severe_console_messages(browser) if "Content Security Policy" in m]
    assert refused == []  # the console needs nothing the policy refuses


def test_lag_rises_and_falls_live_without_reload(browser: webdriver.Chrome, fleet: Fleet) -> None:
    """t2 away while t1 commits: t2's lag (the source's seq, as t1's commits show it, minus
    t2's watermark) rises on the page, then falls back to 0 once t2 is back."""
    mapping, src, (dst1, dst2) = fleet.new_mapping(targets=("t1", "t2"))
    (src / "first.txt").write_text("first")
    fleet.wait_converged(src, [dst1, dst2])
    before = _caught_up(fleet, mapping)["watermark"]
    _log_in(browser, fleet, _admin_token(fleet))
    _logged_in(browser)
    for target in ("t1", "t2"):
        cell = _target_cell(mapping, "watermark", target)
        eventually(lambda c=cell: text_of(browser, c) == str(before), f"{target}'s watermark")
    script(browser, "window.__samePage = true")

    fleet.cluster.agents["t2"].process.stop()
    try:
        for i in range(5):
            (src / f"live-{i}.txt").write_text(f"live {i}")
        fleet.wait_converged(src, [dst1])
        eventually(
            lambda: text_of(browser, _target_cell(mapping, "lag", "t2")) == "5", "t2's lag 5"
        )
        assert text_of(browser, _target_cell(mapping, "watermark", "t2")) == str(before)
        eventually(
            lambda: text_of(browser, _target_cell(mapping, "lag", "t1")) == "0", "t1's lag 0"
        )
    finally:
        fleet.cluster.start_agent("t2")
    fleet.wait_converged(src, [dst2])
    cell = _target_cell(mapping, "watermark", "t2")
    eventually(lambda: text_of(browser, cell) == str(before + 5), "t2's new watermark on the page")
    eventually(lambda: text_of(browser, _target_cell(mapping, "lag", "t2")) == "0", "t2's lag 0")
    assert script(browser, "return window.__samePage") is True  # no reload


def _held(fleet: Fleet, mapping: dict) -> dict | None:
    events = fleet.cluster.api.get("/api/events", params={"since": 0, "limit": 1000}).json()
    held = [
        e
        for e in events
        if e["type"] == "mass_delete_held" and e["data"]["mapping_id"] == mapping["id"]
    ]
    return held[-1]["data"] if held else None


def _entries(root: Path) -> int:
    return sum(1 for _ in root.rglob("*"))


def test_held_mass_delete_confirmed_from_the_console(
    browser: webdriver.Chrome, fleet: Fleet
) -> None:
    mapping, src, dst = _new_mapping(fleet, files=0)
    for d in range(4):
        (src / f"d{d}").mkdir()
        for i in range(50):
            (src / f"d{d}" / f"{i}.txt").write_text(f"{d}/{i}")
    fleet.wait_converged(src, [dst])
    for d in range(3):  # rm -rf most of the folder
        shutil.rmtree(src / f"d{d}")
    held = wait_until(
        lambda: _held(fleet, mapping), timeout_s=CONVERGE_TIMEOUT_S, what="the mass-delete alarm"
    )
    row = f'#held [data-held="{mapping["name"]}"]'
    button = f"{row} button.confirm-deletes"

    _log_in(browser, fleet, _api_token(fleet, "console-read", "read")["token"])
    _logged_in(browser)
    eventually(
        lambda: (
            f"{held['deletes']} of {held['entries']} entries" in text_of(browser, f"{row} .count")
        ),
        "the held count",
    )
    assert not element(browser, button).is_enabled()
    assert "admin token" in str(element(browser, button).get_attribute("title"))

    _log_in(browser, fleet, _admin_token(fleet))
    _logged_in(browser)
    click(browser, button, "the confirm button")
    held = _held(fleet, mapping) or held
    dialog = eventually(
        lambda: (
            element(browser, "#confirm-dialog").is_displayed()
            and element(browser, "#confirm-dialog")
        ),
        "the confirm dialog",
    )
    assert f"Delete {held['deletes']} entries?" in dialog.text
    # nothing held went before the operator confirmed
    assert _entries(dst) - _entries(src) >= held["deletes"]
    element(browser, "#confirm-ok").click()
    fleet.wait_converged(src, [dst])
    assert not any((dst / f"d{d}").exists() for d in range(3)) and (dst / "d3" / "0.txt").exists()
    eventually(lambda: not browser.find_elements(By.CSS_SELECTOR, row), "the held row gone")


def test_a_held_mass_delete_that_ends_by_itself_leaves_the_console(
    browser: webdriver.Chrome, fleet: Fleet
) -> None:
    """Found in review: a hold that ended without a confirmation (the source folder back)
    stayed on the console, also after a reload (its `mass_delete_held` event was the last word
    in the ring). Now the row goes live, and a fresh page replaying the ring shows none."""
    mapping, src, dst = _new_mapping(fleet, files=0)
    for d in range(4):
        (src / f"d{d}").mkdir()
        for i in range(50):
            (src / f"d{d}" / f"{i}.txt").write_text(f"{d}/{i}")
    fleet.wait_converged(src, [dst])
    away = src.with_name(src.name + ".unmounted")
    src.rename(away)  # an unmount, simulated: an empty folder in its place
    src.mkdir()
    wait_until(
        lambda: _held(fleet, mapping), timeout_s=CONVERGE_TIMEOUT_S, what="the mass-delete alarm"
    )
    row = f'#held [data-held="{mapping["name"]}"]'
    _log_in(browser, fleet, _admin_token(fleet))
    _logged_in(browser)
    eventually(lambda: browser.find_elements(By.CSS_SELECTOR, row), "the held row")
    script(browser, "window.__samePage = true")
    src.rmdir()
    away.rename(src)  # back: the guard's recheck finds the held paths and ends the hold
    eventually(lambda: not browser.find_elements(By.CSS_SELECTOR, row), "the held row gone")
    assert script(browser, "return window.__samePage") is True  # gone live, no reload
    browser.refresh()  # a fresh page replays the whole ring
    _logged_in(browser)
    section = f'[data-mapping="{mapping["name"]}"]'
    eventually(lambda: browser.find_elements(By.CSS_SELECTOR, section), "the overview rendered")
    assert not browser.find_elements(By.CSS_SELECTOR, row)  # rendered with the ring replayed
    assert (dst / "d0" / "0.txt").exists()  # nothing was deleted


def _select(driver: webdriver.Chrome, css: str, value: str) -> bool:
    Select(element(driver, css)).select_by_value(value)
    return True


def _job_seq(fleet: Fleet, mapping: dict, path: str) -> int | None:
    """The seq of `path`'s change once the job log (written in batches) has it."""
    jobs = fleet.cluster.api.get("/api/jobs", params={"mapping": mapping["name"]}).json()
    return next((j["seq"] for j in jobs if j["path"] == path), None)


def test_file_names_show_as_text_in_the_job_log(browser: webdriver.Chrome, fleet: Fleet) -> None:
    mapping, src, dst = _new_mapping(fleet)
    (src / XSS_NAME).write_text("<p>hello</p>")
    fleet.wait_converged(src, [dst])
    _log_in(browser, fleet, _admin_token(fleet))
    _logged_in(browser)
    click(browser, '#nav [data-view="jobs"]', "the job log tab")
    eventually(lambda: _select(browser, "#jobs-filter", mapping["name"]), "the mapping filter")
    seq = wait_until(
        lambda: _job_seq(fleet, mapping, XSS_NAME),
        timeout_s=CONVERGE_TIMEOUT_S,
        what="the job log row",
    )
    # read in one probe: the table re-renders live, and a row found before may be gone
    shown = eventually(lambda: text_of(browser, f'#jobs tr[data-seq="{seq}"] td.path'), "its row")
    assert shown == XSS_NAME  # as text
    assert script(browser, "return document.querySelectorAll('#jobs img').length") == 0
    assert script(browser, "return typeof window.__pwned") == "undefined"


def test_console_headers(fleet: Fleet) -> None:
    for path in ("/", "/ui/console.js"):
        r = httpx.get(fleet.cluster.api_url + path, timeout=10)  # no token: the files hold no data
        assert r.status_code == 200, r.text
        csp = r.headers["content-security-policy"]
        assert "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert "unsafe-inline" not in csp
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["referrer-policy"] == "no-referrer"


def test_a_revoked_token_returns_to_the_login_form(browser: webdriver.Chrome, fleet: Fleet) -> None:
    created = _api_token(fleet, "console-revoked", "read")
    _log_in(browser, fleet, created["token"])
    _logged_in(browser)
    r = fleet.cluster.api.delete(f"/api/tokens/api/{created['id']}")
    assert r.status_code == 204, r.text
    message = eventually(
        lambda: element(browser, "#login").is_displayed() and text_of(browser, "#login-error"),
        "the login form again",
    )
    assert "Logged out, the token was refused" in message and "invalid token" in message
    assert script(browser, "return sessionStorage.length") == 0


def test_send_a_manual_release_and_follow_it(browser: webdriver.Chrome, fleet: Fleet) -> None:
    mapping, src, dst = _new_mapping(fleet)
    before = _caught_up(fleet, mapping)["watermark"]
    log = fleet.cluster.base / "agent-src.log"
    starts = log.read_text().count("(manual mode)")
    r = fleet.cluster.api.put(f"/api/mappings/{mapping['id']}/mode", json={"mode": "manual"})
    assert r.status_code == 200, r.text
    wait_until(
        lambda: log.read_text().count("(manual mode)") > starts,
        timeout_s=CONVERGE_TIMEOUT_S,
        what="the source running in manual mode",
    )
    journal = fleet.cluster.agents["src"].data_dir / "sources" / str(mapping["id"]) / "journal"
    for i in range(3):
        (src / f"held-{i}.txt").write_text(f"held {i}")
    wait_until(
        lambda: {f"held-{i}.txt" for i in range(3)} <= {p for _, p in _journaled(journal)},
        timeout_s=CONVERGE_TIMEOUT_S,
        what="the changes journaled",
    )
    assert not (dst / "held-0.txt").exists()

    _log_in(browser, fleet, _admin_token(fleet))
    _logged_in(browser)
    eventually(
        lambda: text_of(browser, _target_cell(mapping, "progress")) == "no release yet",
        "no release",
    )
    # held back by choice: pending (once the source's figures bring its journal head), not lag
    eventually(
        lambda: text_of(browser, _target_cell(mapping, "pending")) == "3",
        "3 changes pending",
        timeout_s=CONVERGE_TIMEOUT_S,
    )
    assert text_of(browser, _target_cell(mapping, "lag")) == "0"
    click(browser, f'[data-mapping="{mapping["name"]}"] button.send', "the send button")
    eventually(lambda: "Release #1" in text_of(browser, "#notice"), "the release requested")
    upto = wait_until(
        lambda: fleet.cluster.api.get(f"/api/mappings/{mapping['id']}/mode").json()[
            "released_upto"
        ],
        timeout_s=CONVERGE_TIMEOUT_S,
        what="the release reported by the source",
    )
    assert upto >= before + 3
    eventually(
        lambda: text_of(browser, _target_cell(mapping, "progress")) == "done", "the release done"
    )
    eventually(lambda: text_of(browser, _target_cell(mapping, "pending")) == "0", "none pending")
    assert text_of(browser, _target_cell(mapping, "watermark")) == str(upto)
    fleet.wait_converged(src, [dst])


def _seqs_shown(driver: webdriver.Chrome) -> list[int]:
    return [
        int(r.get_attribute("data-seq"))
        for r in driver.find_elements(By.CSS_SELECTOR, "#jobs tbody tr")
    ]


def test_job_log_pages_with_the_api_and_filters_by_path(
    browser: webdriver.Chrome, fleet: Fleet
) -> None:
    mapping, src, dst = _new_mapping(fleet, files=60)
    wait_until(
        lambda: _job_seq(fleet, mapping, "f0.txt"), timeout_s=CONVERGE_TIMEOUT_S, what="the job log"
    )
    newest = wait_until(
        lambda: (
            len(
                rows := fleet.cluster.api.get(
                    "/api/jobs", params={"mapping": mapping["name"], "limit": 1000}
                ).json()
            )
            >= 60
            and rows
        ),
        timeout_s=CONVERGE_TIMEOUT_S,
        what="60 rows in the job log",
    )
    seqs = sorted((r["seq"] for r in newest), reverse=True)
    _log_in(browser, fleet, _admin_token(fleet))
    _logged_in(browser)
    click(browser, '#nav [data-view="jobs"]', "the job log tab")
    eventually(lambda: _select(browser, "#jobs-filter", mapping["name"]), "the mapping filter")
    eventually(lambda: _seqs_shown(browser) == seqs[:50], "the newest 50 changes")
    click(browser, "#jobs-older", "older")
    eventually(lambda: _seqs_shown(browser) == seqs[50:100], "the page before")
    assert element(browser, "#jobs-older").is_enabled() is False  # the last page
    element(browser, "#jobs-path").send_keys("f5")
    paths = {r["seq"]: r["path"] for r in newest}
    want = [s for s in seqs[50:100] if "f5" in paths[s]]
    eventually(lambda: _seqs_shown(browser) == want, "the rows whose path has f5")
    click(browser, "#jobs-newest", "newest")
    eventually(
        lambda: _seqs_shown(browser) == [s for s in seqs[:50] if "f5" in paths[s]],
        "newest, filtered",
    )

    click(browser, '#nav [data-view="purges"]', "the purge log tab")
    eventually(lambda: "0 rows (newest page)" in text_of(browser, "#purges-info"), "the purge log")
    assert not element(browser, "#banner").is_displayed()


def _alert(fleet: Fleet, key: str, state: str) -> dict | None:
    alerts = fleet.cluster.api.get("/api/alerts", params={"limit": 1000}).json()
    return next((a for a in alerts if a["key"] == key and a["state"] == state), None)


def test_acknowledge_an_alert(browser: webdriver.Chrome, fleet: Fleet) -> None:
    # a rule on the master's own figures, which it always breaks: no agent becomes unhealthy
    rule = fleet.cluster.api.post(
        "/api/thresholds",
        json={
            "scope": "server",
            "target": "master",
            "metric": "process_threads",
            "operator": ">",
            "value": 0,
        },
    ).json()
    key = f"threshold:{rule['id']}:master"
    try:
        alert = wait_until(
            lambda: _alert(fleet, key, "firing"), timeout_s=ALERT_TIMEOUT_S, what="the alert firing"
        )
        row = f'#alerts [data-alert="{alert["id"]}"]'
        _log_in(browser, fleet, _api_token(fleet, "console-read-2", "read")["token"])
        _logged_in(browser)
        assert not eventually(
            lambda: element(browser, f"{row} button.ack"), "the button"
        ).is_enabled()

        _log_in(browser, fleet, _admin_token(fleet))
        _logged_in(browser)
        click(browser, f"{row} button.ack", "acknowledge")
        acked = wait_until(
            lambda: _alert(fleet, key, "acknowledged"),
            timeout_s=CONVERGE_TIMEOUT_S,
            what="acknowledged",
        )
        assert acked["acknowledged_by"] == "console"
        eventually(
            lambda: text_of(browser, f"{row} .state") == "acknowledged", "acknowledged on the page"
        )
    finally:
        assert fleet.cluster.api.delete(f"/api/thresholds/{rule['id']}").status_code == 204
