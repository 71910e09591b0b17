"""Static files (the admin's CSS and JS, our own) are served by the app server itself."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.request import Request, urlopen

import pytest
from selenium.webdriver.common.by import By

from tests.e2e.browser import screenshot
from tests.e2e.conftest import ROOT, ASGIServer

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]


def get(url: str, **headers: str) -> Any:
    return urlopen(Request(url, headers=headers), timeout=10)


def test_development_server_serves_admin_static(asgi_server: Callable[..., ASGIServer]) -> None:
    server = asgi_server()
    with get(server + "/static/admin/css/base.css") as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/css")
        assert b"--body-bg" in response.read()


def test_production_serves_hashed_compressed_files_after_collectstatic(
    asgi_server: Callable[..., ASGIServer], tmp_path: Path
) -> None:
    env = {
        "DJANGO_DEBUG": "false",
        "DJANGO_SECRET_KEY": "test-only-" + "x" * 50,
        "DJANGO_STATIC_ROOT": str(tmp_path / "static"),
    }
    subprocess.run(
        [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"],
        cwd=ROOT,
        env={**os.environ, **env},
        check=True,
    )
    server = asgi_server(env=env)
    with get(server + "/admin/login/") as response:
        page = response.read().decode()
    match = re.search(r'href="(/static/admin/css/base\.[0-9a-f]{12}\.css)"', page)
    assert match, "the login page links the hashed stylesheet"
    with get(server + match.group(1), **{"Accept-Encoding": "gzip"}) as response:
        assert response.status == 200
        assert response.headers["Content-Encoding"] == "gzip"
        assert "immutable" in response.headers["Cache-Control"]
    with get(server + "/static/admin/css/base.css") as response:
        assert response.status == 200  # the unhashed name still works, briefly cached


@pytest.mark.browser
def test_admin_login_is_styled_in_a_real_browser(
    asgi_server: Callable[..., ASGIServer], chromium: Callable[..., Any]
) -> None:
    server = asgi_server()
    driver = chromium()
    driver.get(server + "/admin/login/")
    header = driver.find_element(By.ID, "header")
    # Unstyled, the header is transparent; the admin's CSS paints it.
    assert header.value_of_css_property("background-color") not in ("rgba(0, 0, 0, 0)", "")
    failed = driver.execute_script(
        "return performance.getEntriesByType('resource')"
        ".filter(e => e.name.includes('/static/') && e.responseStatus >= 400)"
        ".map(e => e.name)"
    )
    assert failed == []
    screenshot(driver, "admin-login")
