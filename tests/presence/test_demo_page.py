"""The demo page at ``/``: a login link for visitors, the live client for users."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

pytestmark = pytest.mark.django_db


def test_visitor_is_pointed_to_the_login_page(client: Client) -> None:
    response = client.get("/")

    assert response.status_code == 200
    assert b'href="/accounts/login/?next=/"' in response.content
    assert b"new WebSocket" not in response.content


def test_user_gets_the_client(client: Client, user_factory: Any) -> None:
    client.force_login(user_factory("alice"))

    body = client.get("/").content.decode()

    assert "Signed in as <strong>alice</strong>" in body
    assert "/ws/presence/" in body
    for message_type in ("presence.list", "room.join", "status.set", "chat.typing"):
        assert f'"{message_type}"' in body


def test_login_page_renders(client: Client) -> None:
    response = client.get("/accounts/login/")

    assert response.status_code == 200
    assert b'name="username"' in response.content
