"""Shared fixtures: a private real redis-server, users, WebSocket clients, server processes.

The Redis server is started once per test run on a free port (never the shared 6379) and
emptied before each test; fault tests may kill and restart it through ``redis_server``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from channels.layers import channel_layers
from channels.testing import WebsocketCommunicator
from django.conf import settings

from config.embedded_redis import RedisServer
from presence import store
from presence.auth import mint_token

_server: RedisServer | None = None
_tmp: Path | None = None


def pytest_configure(config: pytest.Config) -> None:
    """Start the private Redis before any test touches settings that point at it."""
    global _server, _tmp
    _tmp = Path(tempfile.mkdtemp(prefix="presence-tests-"))
    _server = RedisServer(_tmp / "redis").start()
    url = _server.url
    os.environ["REDIS_URL"] = url  # for subprocesses (ASGI server, Celery worker)
    settings.REDIS_URL = url
    settings.CELERY_BROKER_URL = url
    settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"] = [url]
    from config.celery import app as celery_app

    celery_app.conf.broker_url = url


def pytest_unconfigure(config: pytest.Config) -> None:
    if _server is not None:
        _server.stop()
    if _tmp is not None:
        shutil.rmtree(_tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> RedisServer:
    """The private redis-server of this test run (kill/restart it in fault tests)."""
    assert _server is not None
    return _server


@pytest.fixture(autouse=True)
def _clean_redis(redis_server: RedisServer) -> Iterator[None]:
    """Every test starts with an empty Redis and fresh clients."""
    if not redis_server.ping():
        redis_server.start()
    redis.Redis.from_url(redis_server.url).flushall()
    store.reset_clients()
    channel_layers.backends.clear()
    yield
    store.reset_clients()
    channel_layers.backends.clear()


@pytest.fixture
def r(redis_server: RedisServer) -> redis.Redis:
    """A plain sync client on the test Redis (decoded strings)."""
    return redis.Redis.from_url(redis_server.url, decode_responses=True)


@pytest.fixture
def user_factory(django_user_model: Any) -> Callable[..., Any]:
    """Create users: ``user_factory("alice")``, ``user_factory(is_active=False)``."""
    counter = iter(range(1, 1_000_000))

    def make(username: str | None = None, **extra: Any) -> Any:
        name = username or f"user{next(counter)}"
        return django_user_model.objects.create_user(username=name, password="pw", **extra)

    return make


class WSClient:
    """A WebsocketCommunicator speaking protocol v1 frames (JSON)."""

    def __init__(self, communicator: WebsocketCommunicator) -> None:
        self.comm = communicator
        self.hello: dict[str, Any] | None = None

    async def send(self, frame: Any) -> None:
        await self.comm.send_to(text_data=json.dumps(frame))

    async def recv(self, timeout: float = 3) -> dict[str, Any]:
        return json.loads(await self.comm.receive_from(timeout=timeout))

    async def recv_until(self, pred: Callable[[dict[str, Any]], bool], timeout: float = 3) -> dict[str, Any]:
        """Receive frames until one matches ``pred`` (others are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                frame = await self.recv(timeout=timeout)
                if pred(frame):
                    return frame

    async def request(self, type_: str, data: dict[str, Any] | None = None, id_: Any = 1) -> dict[str, Any]:
        frame: dict[str, Any] = {"type": type_, "id": id_}
        if data is not None:
            frame["data"] = data
        await self.send(frame)
        return await self.recv_until(lambda f: f.get("id") == id_ and f["type"] != "presence")

    async def no_frame(self, timeout: float = 0.3) -> bool:
        return await self.comm.receive_nothing(timeout=timeout)

    async def close(self) -> None:
        await self.comm.disconnect()


@pytest.fixture
async def ws_client() -> AsyncIterator[Callable[..., Awaitable[WSClient]]]:
    """Connect a user through the full ASGI stack (origin check, auth, consumer).

    ``await ws_client(user)`` returns a client that has already received ``hello``;
    ``expect_hello=False`` returns right after the handshake.
    """
    from config.asgi import application

    clients: list[WSClient] = []

    async def connect(
        user: Any = None,
        *,
        token: str | None = None,
        origin: str = "http://localhost",
        expect_hello: bool = True,
        headers: list[tuple[bytes, bytes]] | None = None,
    ) -> WSClient:
        path = "/ws/presence/"
        if token is None and user is not None:
            from asgiref.sync import sync_to_async

            token = await sync_to_async(mint_token)(user)
        if token:
            path += f"?token={token}"
        comm = WebsocketCommunicator(
            application, path, headers=[(b"origin", origin.encode()), *(headers or [])]
        )
        connected, _ = await comm.connect(timeout=5)
        client = WSClient(comm)
        client.connected = connected  # type: ignore[attr-defined]
        clients.append(client)
        if connected and expect_hello:
            client.hello = await client.recv()
            assert client.hello["type"] == "hello", client.hello
        return client

    yield connect
    for client in clients:
        try:
            await client.comm.disconnect()
        except Exception:  # noqa: BLE001 - already closed by the test
            pass
