"""The WebSocket session middleware (presence/access/auth.py): the session resolved as
Channels does, without Channels' wrapper around every frame a WebSocket sends."""

from __future__ import annotations

from typing import Any

import pytest
from channels.sessions import CookieMiddleware

from presence.access.auth import WebSocketSessionMiddleware, websocket_sends_save_session

pytestmark = pytest.mark.timeout(10)


class Inner:
    """Records what the middleware hands the application."""

    def __init__(self) -> None:
        self.scope: dict[str, Any] = {}
        self.send: Any = None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        self.scope = scope
        self.send = send


async def server_send(message: dict[str, Any]) -> None:
    """The server's ASGI send (never called here)."""


async def receive() -> dict[str, Any]:
    return {"type": "websocket.connect"}


def scope_of(kind: str) -> dict[str, Any]:
    return {
        "type": kind,
        "path": "/ws/presence/",
        "headers": [(b"cookie", b"sessionid=abcdefgh12345678")],
    }


def test_channels_never_saves_the_session_on_a_websocket_message() -> None:
    # What makes the pass-through safe: a Channels version that saved on a WebSocket message
    # type would keep its wrapper (the middleware checks the same function at every connect).
    assert websocket_sends_save_session() is False


async def test_a_websocket_frame_goes_to_the_servers_send_directly() -> None:
    inner = Inner()
    await CookieMiddleware(WebSocketSessionMiddleware(inner))(
        scope_of("websocket"), receive, server_send
    )
    assert inner.send is server_send
    # The session is the cookie's, lazily loaded, as Channels' SessionMiddleware gives it.
    assert inner.scope["session"].session_key == "abcdefgh12345678"


async def test_other_scopes_keep_channels_session_wrapper() -> None:
    inner = Inner()
    await CookieMiddleware(WebSocketSessionMiddleware(inner))(
        scope_of("http"), receive, server_send
    )
    assert inner.send is not server_send
    assert inner.scope["session"].session_key == "abcdefgh12345678"
