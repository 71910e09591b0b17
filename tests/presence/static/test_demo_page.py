"""The demo page at ``/``, the favicon, and the browser client's static files.

The page's behaviour is tested in a real browser (tests/e2e/test_client_browser.py); here,
what the server renders and serves.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
from django.core.management import call_command
from django.test import Client

pytestmark = pytest.mark.django_db


def test_visitor_is_pointed_to_the_login_page(client: Client) -> None:
    response = client.get("/")

    assert response.status_code == 200
    body = response.content.decode()
    assert 'href="/accounts/login/?next=/"' in body
    assert "presence.js" not in body
    assert "Log out" not in body


def test_user_gets_the_client_built_on_the_library(client: Client, user_factory: Any) -> None:
    client.force_login(user_factory("alice"))

    body = client.get("/").content.decode()

    assert "Signed in as <strong>alice</strong>" in body
    assert '<script type="module" src="/static/presence/demo/demo.js"></script>' in body
    # The library by its package name, as a bundler would resolve it (no inline code).
    # Its one inline script, allowed by the Content-Security-Policy's per-request nonce.
    importmap = re.search(r'<script type="importmap" nonce="[\w-]{16,}">(.*?)</script>', body, re.S)
    assert importmap is not None
    assert json.loads(importmap.group(1)) == {
        "imports": {"@presence/client": "/static/presence/presence.js"}
    }
    assert "new WebSocket" not in body


def test_user_page_has_a_logout_form_posting_with_csrf(client: Client, user_factory: Any) -> None:
    client.force_login(user_factory("alice"))

    body = client.get("/").content.decode()

    form = re.search(
        r'<form class="logout" method="post" action="([^"]+)">(.*?)</form>', body, re.S
    )
    assert form is not None
    assert form.group(1) == "/accounts/logout/"
    assert 'name="csrfmiddlewaretoken"' in form.group(2)
    assert 'name="next" value="/"' in form.group(2)


def test_logout_form_logs_out_and_returns_to_the_demo(user_factory: Any) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(user_factory("alice"))
    page = client.get("/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page)
    assert token is not None

    response = client.post(
        "/accounts/logout/", {"csrfmiddlewaretoken": token.group(1), "next": "/"}
    )

    assert (response.status_code, response["Location"]) == (302, "/")
    assert b"Log in</a> to connect" in client.get("/").content


def test_favicon_is_not_a_404(client: Client) -> None:
    response = client.get("/favicon.ico")

    assert response.status_code == 302
    assert response["Location"] == "/static/presence/favicon.svg"
    assert "max-age=86400" in response["Cache-Control"]


def test_pages_link_the_icon(client: Client, user_factory: Any) -> None:
    assert b'rel="icon" href="/static/presence/favicon.svg"' in client.get("/").content


def test_collectstatic_ships_the_client_but_not_its_tests(tmp_path: Path, settings: Any) -> None:
    settings.STATIC_ROOT = tmp_path
    settings.STORAGES = {
        **settings.STORAGES,
        "staticfiles": {"BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"},
    }

    call_command("collectstatic", "--noinput", verbosity=0)

    shipped = {p.relative_to(tmp_path).as_posix() for p in (tmp_path / "presence").rglob("*")}
    assert {
        "presence/presence.js",
        "presence/presence.d.ts",
        "presence/favicon.svg",
        "presence/demo/demo.js",
        "presence/demo/demo.css",
    } <= shipped
    assert not [p for p in shipped if "tests" in p or p.endswith("package.json")]


def test_login_page_renders(client: Client) -> None:
    response = client.get("/accounts/login/")

    assert response.status_code == 200
    assert b'name="username"' in response.content
