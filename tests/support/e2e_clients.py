"""Real WebSocket and HTTP clients for tests against a real server (``asgi_server``).

Logged-in sessions (cookie + CSRF), server-minted WebSocket tokens, and a ``websockets``
client with small helpers to read frames and closes.
"""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from asgiref.sync import sync_to_async
from django.test import Client
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.support.servers import ASGIServer

UserFactory = Callable[..., Awaitable[Any]]
CSRF = "e2e0csrf0secret0of032characters0"  # a valid unmasked CSRF secret (32 chars)
_opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def session_id_for(user: Any) -> str:
    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


def _http(
    method: str, url: str, session: str | None = None, origin: str | None = None
) -> tuple[int, Any]:
    headers = {"Accept": "application/json"}
    if session:
        headers["Cookie"] = f"sessionid={session}; csrftoken={CSRF}"
        headers["X-CSRFToken"] = CSRF
    if origin:
        headers["Origin"] = origin
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with _opener.open(request, timeout=10) as response:
            return response.status, _body(response.read())
    except urllib.error.HTTPError as err:
        return err.code, _body(err.read())


def _body(raw: bytes) -> Any:
    """JSON when the answer is JSON, else its text (a page after a redirect)."""
    try:
        return json.loads(raw or b"null")
    except ValueError:
        return raw.decode(errors="replace")


async def http(
    method: str, url: str, session: str | None = None, origin: str | None = None
) -> tuple[int, Any]:
    return await asyncio.to_thread(_http, method, url, session, origin)


async def token_for(server: ASGIServer, user: Any) -> str:
    """A WebSocket token minted by the server itself for a logged-in user."""
    session = await sync_to_async(session_id_for)(user)
    status, body = await http("POST", server.url + "/api/presence/token/", session, server.url)
    assert status == 200, body
    return str(body["token"])


@asynccontextmanager
async def ws(
    server: ASGIServer,
    token: str | None = None,
    origin: str | None = None,
    *,
    session: str | None = None,
    subprotocols: list[str] | None = None,
    headers: dict[str, str] | None = None,
) -> AsyncIterator[ClientConnection]:
    """A socket to ``server``: authenticated by ``?token=``, a ``session`` cookie, or a token
    among ``subprotocols`` (``presence.token.<token>``); ``headers`` are sent as well."""
    uri = server.ws_url + "/ws/presence/" + (f"?token={token}" if token else "")
    extra = {**({"Cookie": f"sessionid={session}"} if session else {}), **(headers or {})}
    async with connect(
        uri,
        origin=origin or server.url,  # type: ignore[arg-type]
        additional_headers=extra or None,
        subprotocols=subprotocols,  # type: ignore[arg-type]
        compression=None,
        proxy=None,
        open_timeout=10,
        close_timeout=2,
    ) as conn:
        yield conn


@asynccontextmanager
async def alice_connected(
    server: ASGIServer, auser_factory: UserFactory
) -> AsyncIterator[tuple[ClientConnection, str]]:
    """Alice, authenticated by a server-minted token, past ``hello``: (socket, session id)."""
    token = await token_for(server, await auser_factory("alice"))
    async with ws(server, token) as conn:
        yield conn, (await recv(conn))["session_id"]


async def recv(conn: ClientConnection, within: float = 5) -> dict[str, Any]:
    return json.loads(await asyncio.wait_for(conn.recv(), within))


async def recv_until(
    conn: ClientConnection, pred: Callable[[dict[str, Any]], bool], within: float = 5
) -> dict[str, Any]:
    async with asyncio.timeout(within):
        while True:
            frame = await recv(conn, within)
            if pred(frame):
                return frame


async def request(conn: ClientConnection, frame: dict[str, Any]) -> dict[str, Any]:
    await conn.send(json.dumps(frame))
    return await recv_until(conn, lambda f: f.get("id") == frame["id"] and f["type"] != "presence")


async def closed_with(conn: ClientConnection, within: float = 5) -> tuple[int | None, list[Any]]:
    """Read until the server closes: (close code, frames received before)."""
    frames = []
    async with asyncio.timeout(within):
        try:
            while True:
                frames.append(json.loads(await conn.recv()))
        except ConnectionClosed as closed:
            return (closed.rcvd.code if closed.rcvd else None), frames
