"""Handler control across two real uvicorn processes (issue 4 acceptance).

Both servers register their handlers at start-up (rows in the shared test database); an
operator disables ``chat.typing`` through the admin in this process, and each server must
answer ``handler_disabled`` within 2 s, then serve it again within 2 s of enabling.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import AsyncExitStack
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async
from django.test import Client
from django.urls import reverse
from websockets.asyncio.client import ClientConnection, connect

from presence import store
from presence.access.auth import mint_token
from presence.handlers import registry
from presence.models import RegisteredHandler
from tests.support.servers import ASGIServer

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.timeout(90),
]

PROPAGATION_LIMIT = 2.0
CHANGELIST = reverse("admin:presence_registeredhandler_changelist")
_ids = itertools.count(1)


@pytest.fixture(autouse=True)
def _clean_registry() -> Iterator[None]:
    """The admin action also applies the disabled set in this process: undo it."""
    yield
    registry.set_disabled(frozenset())


async def recv_until(
    conn: ClientConnection, pred: Callable[[dict[str, Any]], bool], within: float = 5
) -> dict[str, Any]:
    async with asyncio.timeout(within):
        while True:
            frame = json.loads(await conn.recv())
            if pred(frame):
                return frame


async def request(conn: ClientConnection, type_: str, data: dict[str, Any]) -> dict[str, Any]:
    frame_id = next(_ids)
    await conn.send(json.dumps({"type": type_, "id": frame_id, "data": data}))
    return await recv_until(conn, lambda f: f.get("id") == frame_id and f["type"] != "presence")


async def typing(conn: ClientConnection) -> str:
    """Send chat.typing; the reply's type, or its error code."""
    reply = await request(conn, "chat.typing", {"room": "lobby"})
    return str(reply["code"] if reply["type"] == "error" else reply["type"])


async def until_answer(conn: ClientConnection, expected: str, started: float) -> float:
    """Poll every 100 ms until chat.typing is answered with ``expected``; seconds taken."""
    while True:
        if await typing(conn) == expected:
            return time.monotonic() - started
        assert time.monotonic() - started < PROPAGATION_LIMIT + 3, f"never saw {expected}"
        await asyncio.sleep(0.1)


async def open_ws(stack: AsyncExitStack, server: ASGIServer, user: Any) -> ClientConnection:
    token = await sync_to_async(mint_token)(user)
    conn = await stack.enter_async_context(
        connect(
            f"{server.ws_url}/ws/presence/?token={token}",
            origin=server.url,  # type: ignore[arg-type]
            compression=None,
            proxy=None,
            open_timeout=10,
            close_timeout=2,
        )
    )
    hello = json.loads(await asyncio.wait_for(conn.recv(), 5))
    assert hello["type"] == "hello", hello
    assert (await request(conn, "room.join", {"room": "lobby"}))["type"] == "reply"
    return conn


def admin_action(client: Client, action: str, handler: RegisteredHandler) -> list[str]:
    response = client.post(
        CHANGELIST, {"action": action, "_selected_action": [handler.pk]}, follow=True
    )
    assert response.status_code == 200
    return [str(m) for m in response.context["messages"]]


@pytest.fixture
async def operator(auser_factory: Any) -> AsyncIterator[Client]:
    user = await auser_factory("operator", is_staff=True, is_superuser=True)
    client = Client()
    await sync_to_async(client.force_login)(user)
    yield client


async def test_disable_and_enable_reach_both_servers_within_2s(
    asgi_server: Callable[..., ASGIServer], auser_factory: Any, operator: Client
) -> None:
    first, second = asgi_server(), asgi_server()

    # Start-up registration by the real processes: one row per type, active.
    row = await RegisteredHandler.objects.aget(type="chat.typing")
    servers = {f"{socket.gethostname()}:{s.process.pid}" for s in (first, second)}
    assert row.status == "active"
    assert row.last_registered_by in servers
    assert await RegisteredHandler.objects.acount() == len(list(registry))
    for server in (first, second):
        assert "handler registration by" in server.log()

    alice, bob = await auser_factory("alice"), await auser_factory("bob")
    async with AsyncExitStack() as stack:
        conns = [await open_ws(stack, first, alice), await open_ws(stack, second, bob)]
        assert [await typing(c) for c in conns] == ["reply", "reply"]

        started = time.monotonic()
        texts = await sync_to_async(admin_action)(operator, "disable_handlers", row)
        assert any("Disabled 1 handler(s): chat.typing" in t for t in texts), texts
        took = await asyncio.gather(*(until_answer(c, "handler_disabled", started) for c in conns))
        assert max(took) < PROPAGATION_LIMIT, took
        # Core handlers keep working while an application handler is off.
        assert (await request(conns[0], "heartbeat", {}))["type"] == "heartbeat.ack"

        started = time.monotonic()
        texts = await sync_to_async(admin_action)(operator, "enable_handlers", row)
        assert any("Enabled 1 handler(s): chat.typing" in t for t in texts), texts
        took = await asyncio.gather(*(until_answer(c, "reply", started) for c in conns))
        assert max(took) < PROPAGATION_LIMIT, took

    assert (await RegisteredHandler.objects.aget(type="chat.typing")).status == "active"


async def test_disabled_state_survives_a_server_start(
    asgi_server: Callable[..., ASGIServer],
    auser_factory: Any,
    operator: Client,
    r: redis.Redis,
) -> None:
    """A process started after the change learns it from the database at start-up."""
    asgi_server()
    row = await RegisteredHandler.objects.aget(type="chat.typing")
    await sync_to_async(admin_action)(operator, "disable_handlers", row)
    # Redis lost its data meanwhile: the database is the only place the change lives.
    k = store.control_keys()
    assert r.delete(k.handlers_disabled, k.handlers_version) == 2

    late = asgi_server()
    async with AsyncExitStack() as stack:
        conn = await open_ws(stack, late, await auser_factory("carol"))
        assert await typing(conn) == "handler_disabled"
    assert (await RegisteredHandler.objects.aget(type="chat.typing")).status == "disabled"
