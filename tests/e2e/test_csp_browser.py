"""The Content-Security-Policy in a real browser: every page sends it, and the demo page, the
console's charts and the admin work under it without one violation in Chromium's console.

A production server (hashed static files, DEBUG off) under uvicorn; headless Chromium.
Screenshots: tests/e2e/screenshots/csp-*.png.
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable
from typing import Any

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.remote.webdriver import WebDriver
from selenium.webdriver.support.ui import WebDriverWait

from presence.jobs import flush, reap, sweep
from tests.support.browser import assert_styled, browser_log, csp_violations, screenshot
from tests.support.servers import ASGIServer

from .test_console_browser import history

pytestmark = [pytest.mark.slow, pytest.mark.browser, pytest.mark.django_db(transaction=True)]

PASSWORD = "operator-pw-12"
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def headers_of(url: str) -> dict[str, str]:
    try:
        with _opener.open(url, timeout=10) as response:
            return {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as err:
        return {k.lower(): v for k, v in err.headers.items()}


def wait_js(driver: WebDriver, script: str, timeout: float = 10) -> Any:
    return WebDriverWait(driver, timeout, poll_frequency=0.1).until(
        lambda d: d.execute_script(f"return ({script});"), script
    )


def no_violations(driver: WebDriver, page: str) -> None:
    violations = csp_violations(driver)
    assert violations == [], f"{page}: {violations}"


@pytest.fixture
def server(
    asgi_server: Callable[..., ASGIServer], production_env: dict[str, str], django_user_model: Any
) -> ASGIServer:
    django_user_model.objects.create_superuser("root", password=PASSWORD)
    return asgi_server(env=production_env)


def test_every_kind_of_answer_carries_the_policy(server: ASGIServer) -> None:
    for path in ("/", "/accounts/login/", "/admin/login/", "/api/presence/online/", "/healthz"):
        policy = headers_of(server.url + path).get("content-security-policy", "")
        assert "default-src 'self'" in policy, path
        assert "script-src 'self' 'nonce-" in policy, path
        assert "unsafe-inline" not in policy and "unsafe-eval" not in policy, path
    first = headers_of(server.url + "/accounts/login/")["content-security-policy"]
    second = headers_of(server.url + "/accounts/login/")["content-security-policy"]
    assert first != second  # a fresh nonce per response


def test_demo_console_and_admin_work_under_the_policy(
    server: ASGIServer, chromium: Callable[..., WebDriver], django_user_model: Any
) -> None:
    root = django_user_model.objects.get(username="root")
    history()  # a week of stats buckets: the charts have lines to draw
    flush.flush_stats(), sweep.sweep_expired(), reap.reap_sessions()
    driver = chromium(height=1800)

    # The demo page: its inline import map runs (nonce), the module loads, the socket opens.
    driver.get(server.url + "/accounts/login/")
    driver.find_element(By.NAME, "username").send_keys("root")
    driver.find_element(By.NAME, "password").send_keys(PASSWORD)
    driver.find_element(By.CSS_SELECTOR, "form [type=submit]").click()
    wait_js(driver, "window.presenceDemo && window.presenceDemo.client.state === 'open'")
    driver.find_element(By.ID, "room").clear()
    driver.find_element(By.ID, "room").send_keys("lobby")
    driver.find_element(By.CSS_SELECTOR, "#join button").click()
    wait_js(driver, "document.querySelectorAll('#members li[data-user-id]').length > 0")
    screenshot(driver, "csp-demo")
    no_violations(driver, "demo")

    # The console's dashboard: its charts and its live refresh.
    driver.get(server.url + "/admin/presence/dashboard/")
    WebDriverWait(driver, 10).until(lambda d: d.title.startswith("Presence dashboard"))
    assert_styled(driver)
    sheets = driver.execute_script("return [...document.styleSheets].map(s => s.href || '')")
    assert any("/static/presence/console/console." in href for href in sheets), sheets
    charts = driver.find_elements(By.CSS_SELECTOR, "svg.console-svg")
    assert charts and all(chart.size["width"] > 300 for chart in charts)
    line = charts[0].find_elements(By.CSS_SELECTOR, "path.line")
    assert line and line[0].value_of_css_property("stroke") not in ("none", "")
    # One live refresh: the feed fetched and its fragments swapped in (connect-src, innerHTML).
    wait_js(driver, "Number(document.getElementById('console-dashboard').dataset.polls) >= 1", 15)
    screenshot(driver, "csp-dashboard")
    no_violations(driver, "dashboard")

    # The admin: index, a change list with its filters and actions, a form with widgets.
    for path, title in (
        ("/admin/", "Site administration"),
        ("/admin/auth/user/", "Select user to change"),
        (f"/admin/auth/user/{root.pk}/change/", "root"),
        ("/admin/presence/webhookendpoint/add/", "Add webhook endpoint"),
        ("/admin/presence/online/", "Online"),
    ):
        driver.get(server.url + path)
        WebDriverWait(driver, 10).until(lambda d, t=title: t.lower() in d.title.lower())
        assert_styled(driver)
        screenshot(driver, "csp" + path.replace("/", "-").rstrip("-"))
        no_violations(driver, path)

    # The theme switch (admin JS) and the select-all checkbox of a change list still work.
    driver.get(server.url + "/admin/auth/user/")
    driver.find_element(By.ID, "action-toggle").click()
    assert driver.find_element(
        By.CSS_SELECTOR, "#result_list tbody input.action-select"
    ).is_selected()
    no_violations(driver, "change list actions")


def test_a_violation_would_be_seen(server: ASGIServer, chromium: Callable[..., WebDriver]) -> None:
    # The watch itself works: an inline script without the nonce is refused and reported.
    driver = chromium()
    driver.get(server.url + "/accounts/login/")
    browser_log(driver)  # empty the buffer
    driver.execute_script(
        "const s = document.createElement('script'); s.textContent = 'window.ran = 1';"
        "document.body.appendChild(s);"
    )
    WebDriverWait(driver, 5).until(lambda d: csp_violations(d) or None)
    assert driver.execute_script("return window.ran") is None
