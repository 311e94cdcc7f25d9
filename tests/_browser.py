"""Real headless Chromium for the console tests: Debian's chromium and chromium-driver, driven
by selenium, with its profile in a temp dir."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webelement import WebElement

from relaysync.testing.cluster import wait_until

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
UI_TIMEOUT_S = 30.0  # a generous bound for the page to show what the API already has
PAGE_LOAD_TIMEOUT_S = 30.0

T = TypeVar("T")


def _require_binaries() -> None:
    for path in (CHROMIUM, CHROMEDRIVER):
        if shutil.which(path) is None:
            pytest.fail(
                f"{path} not found: install Debian's chromium and chromium-driver "
                "(`bash scripts/install test`); the console is tested in a real browser",
                pytrace=False,
            )


@contextmanager
def headless_chromium(profile: Path) -> Iterator[webdriver.Chrome]:
    """One Chromium (and its chromedriver) for the session; quit, and the driver stopped, after."""
    _require_binaries()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",  # root in a container: the sandbox needs user namespaces
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--no-first-run",
        "--disable-extensions",
        f"--user-data-dir={profile}",
        "--window-size=1400,1000",
    ):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    service = Service(executable_path=CHROMEDRIVER, log_output=str(profile.parent / "driver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(PAGE_LOAD_TIMEOUT_S)
    try:
        yield driver
    finally:
        try:
            driver.quit()  # closes Chromium, then stops the chromedriver process it started
        finally:
            service.stop()


def eventually(probe: Callable[[], T | None], what: str, timeout_s: float = UI_TIMEOUT_S) -> T:
    """Poll `probe` until it returns something truthy; a DOM node replaced meanwhile (the
    console re-renders live) counts as not yet."""

    def attempt() -> T | None:
        try:
            return probe()
        except (StaleElementReferenceException, LookupError):
            return None

    return wait_until(attempt, timeout_s=timeout_s, interval_s=0.1, what=what)


def text_of(driver: webdriver.Chrome, css: str) -> str:
    """The text of the first element matching `css`; LookupError if none."""
    found = driver.find_elements(By.CSS_SELECTOR, css)
    if not found:
        raise LookupError(css)
    return str(found[0].text)


def element(driver: webdriver.Chrome, css: str) -> WebElement:
    found = driver.find_elements(By.CSS_SELECTOR, css)
    if not found:
        raise LookupError(css)
    return found[0]


def click(driver: webdriver.Chrome, css: str, what: str) -> None:
    """Click the element matching `css` once it exists and is enabled (re-found if replaced)."""

    def attempt() -> bool:
        node = element(driver, css)
        if not node.is_enabled():
            return False
        node.click()
        return True

    eventually(attempt, what)


def script(driver: webdriver.Chrome, source: str, *args: Any) -> Any:
    try:
        return driver.execute_script(source, *args)
    except WebDriverException as exc:
        raise AssertionError(f"script failed: {exc.msg}") from exc


def severe_console_messages(driver: webdriver.Chrome) -> list[str]:
    """The page's console errors since the last call (a module that failed to load, CSP)."""
    return [e["message"] for e in driver.get_log("browser") if e["level"] == "SEVERE"]
