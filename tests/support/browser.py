"""Headless Chromium (Debian's ``chromium`` + ``chromium-driver``) driven by Selenium.

Never downloads a browser or a driver: both come from the system packages, which ``.ci/run``
installs when they are missing. Screenshots go to ``tests/e2e/screenshots/`` (ignored by git)
so a failing page can be looked at.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, WebDriverException
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support import expected_conditions
from selenium.webdriver.support.ui import WebDriverWait

from tests.support.paths import ROOT

CHROMIUM = os.environ.get("CHROMIUM_BINARY", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("CHROMEDRIVER", "/usr/bin/chromedriver")
SCREENSHOTS = ROOT / "tests" / "e2e" / "screenshots"

# Without the background-networking flags Chromium keeps dialling Google's hosts, which this
# closed network refuses; --no-sandbox because CI runs as root.
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
)


def start_chromium(profile_dir: Path, *, width: int = 1280, height: int = 900) -> WebDriver:
    """A new headless Chromium with its own empty profile (cookies, storage, bfcache)."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not shutil.which(path)]
    if missing:
        why = (
            f"{', '.join(missing)} not installed: apt-get install chromium chromium-driver "
            "(.ci/run does this)"
        )
        # CI installs them, so there a missing browser is a failure, never a quiet skip; on a
        # developer's machine without root the browser tests are skipped with this one line.
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(why)
        pytest.skip(why)
    options = Options()
    options.binary_location = CHROMIUM
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile_dir}")
    options.add_argument(f"--window-size={width},{height}")
    # The console's messages (CSP violations among them) for browser_log().
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not look for drivers
    driver = webdriver.Chrome(service=Service(executable_path=CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    return driver


def login(driver: WebDriver, base_url: str, username: str, password: str) -> None:
    """Log in through the real login form; returns once the redirect after it has landed."""
    driver.get(f"{base_url}/accounts/login/")
    driver.find_element(By.NAME, "username").send_keys(username)
    driver.find_element(By.NAME, "password").send_keys(password)
    driver.find_element(By.CSS_SELECTOR, "form [type=submit]").click()
    WebDriverWait(driver, 10).until(lambda d: urlsplit(d.current_url).path != "/accounts/login/")


def wait_for_text(driver: WebDriver, css: str, text: str, timeout: float = 10) -> None:
    """Wait until the element matched by ``css`` contains ``text``.

    While the page navigates (a form posted, a redirect), an element found in the old
    document may be gone by the time its text is read: Chromium then answers "Node with
    given id does not belong to the document" (a plain WebDriverException) or a stale
    reference. Both mean "not yet": the wait goes on and fails only at its timeout.
    """
    WebDriverWait(
        driver, timeout, ignored_exceptions=(StaleElementReferenceException, WebDriverException)
    ).until(expected_conditions.text_to_be_present_in_element((By.CSS_SELECTOR, css), text))


def browser_log(driver: WebDriver) -> list[str]:
    """The console's messages since the last call (reading empties the buffer)."""
    return [str(entry.get("message", "")) for entry in driver.get_log("browser")]


def csp_violations(driver: WebDriver) -> list[str]:
    """Console messages since the last call that report a Content-Security-Policy violation."""
    return [m for m in browser_log(driver) if "Content Security Policy" in m]


def screenshot(driver: WebDriver, name: str) -> Path:
    """Save a PNG of the current page under tests/e2e/screenshots/ and return its path."""
    SCREENSHOTS.mkdir(exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    driver.save_screenshot(str(path))
    return path


def assert_styled(driver: WebDriver, *stylesheets: str) -> None:
    """The page's CSS is loaded and applied (the admin header is painted), no static file
    failed, and each of ``stylesheets`` (path endings) is among the loaded sheets."""
    header = driver.find_element(By.ID, "header")
    # Unstyled, the header is transparent; the admin's CSS paints it.
    assert header.value_of_css_property("background-color") not in ("rgba(0, 0, 0, 0)", "")
    failed = driver.execute_script(
        "return performance.getEntriesByType('resource')"
        ".filter(e => e.name.includes('/static/') && e.responseStatus >= 400)"
        ".map(e => e.name)"
    )
    assert failed == []
    sheets = driver.execute_script(
        "return [...document.styleSheets].map(s => s.href || '').filter(h => h)"
    )
    for wanted in stylesheets:
        assert any(h.endswith(wanted) for h in sheets), (wanted, sheets)
