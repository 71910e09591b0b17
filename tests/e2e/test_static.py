"""Static files (the admin's CSS and JS, our own) are served by the app server itself."""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any
from urllib.request import Request, urlopen

import pytest

from tests.support.browser import assert_styled, screenshot
from tests.support.servers import ASGIServer

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
    asgi_server: Callable[..., ASGIServer], production_env: dict[str, str]
) -> None:
    server = asgi_server(env=production_env)
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
    assert_styled(driver)
    screenshot(driver, "admin-login")
