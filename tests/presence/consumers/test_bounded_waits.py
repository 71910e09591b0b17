"""Bounded waits: a paused or dead Redis never holds a connect or an HTTP request for long,
and a connect given up on never stays registered.

Findings reproduced: a paused Redis held a new connection 20 s before ``hello``; the HTTP API
blocked 7.7 s, then answered an HTML 500 page, when Redis was down; a connect that failed
after connect.lua ran left the connection registered until its TTL.
"""

from __future__ import annotations

import asyncio
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async
from django.test import Client

from config.embedded_redis import RedisServer
from presence import store
from tests.support.homes import user_keys

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

WSFactory = Callable[..., Awaitable[Any]]
UserFactory = Callable[..., Awaitable[Any]]

# Keeps the server inside one script for ``ms`` milliseconds: every other client waits.
BUSY_SCRIPT = """
local start = redis.call('TIME')
local ms = tonumber(ARGV[1])
repeat
  local now = redis.call('TIME')
until (now[1] - start[1]) * 1000 + (now[2] - start[2]) / 1000 >= ms
return 1
"""


@pytest.fixture
def short_timeouts(settings: Any) -> Iterator[None]:
    settings.PRESENCE_CONNECT_TIMEOUT = 0.5
    settings.PRESENCE_REDIS_SOCKET_TIMEOUT = 0.5
    settings.PRESENCE_REDIS_CONNECT_TIMEOUT = 0.5
    store.reset_clients()  # the cached clients were built with the defaults
    yield
    store.reset_clients()


@contextmanager
def paused(server: RedisServer) -> Iterator[None]:
    """The redis-server process stopped (SIGSTOP): connections open, nothing answers."""
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def busy(server: RedisServer, ms: int) -> threading.Thread:
    """Run a script that occupies the server for ``ms`` ms, from a thread (returns at once)."""
    client = redis.Redis.from_url(server.url)
    thread = threading.Thread(target=client.eval, args=(BUSY_SCRIPT, 0, ms), daemon=True)
    thread.start()
    time.sleep(0.05)  # the script is running before the caller goes on
    return thread


class TestConnect:
    async def test_a_paused_store_gets_1013_within_the_connect_timeout(
        self,
        ws_client: WSFactory,
        auser_factory: UserFactory,
        redis_server: RedisServer,
        short_timeouts: None,
    ) -> None:
        alice = await auser_factory("alice")
        with paused(redis_server):
            started = time.monotonic()
            client = await ws_client(alice, expect_hello=False)
            code, frames = await client.recv_close(timeout=10)
            waited = time.monotonic() - started
        assert code == 1013
        assert frames[-1]["code"] == "unavailable"
        # Generous: 0.5 s configured; without the timeout it waited as long as the pause.
        assert waited < 5, waited

    async def test_a_connect_given_up_on_is_undone_when_it_lands(
        self,
        ws_client: WSFactory,
        auser_factory: UserFactory,
        redis_server: RedisServer,
        r: redis.Redis,
        short_timeouts: None,
    ) -> None:
        alice = await auser_factory("alice")
        await ws_client(await auser_factory("warm"))  # this loop's readers are running
        blocker = busy(redis_server, 1500)
        client = await ws_client(alice, expect_hello=False)
        code, _ = await client.recv_close(timeout=5)
        assert code == 1013
        await asyncio.to_thread(blocker.join)
        # connect.lua was queued behind the busy script and ran after the consumer gave
        # up: the undo ends it (it retries for a few seconds).
        deadline, k = time.monotonic() + 8, user_keys(alice.pk)
        while r.zscore(k.users, str(alice.pk)) is not None:
            assert time.monotonic() < deadline, "the given-up connection is still online"
            await asyncio.sleep(0.1)
        assert r.zcard(k.user_conns(alice.pk)) == 0


class TestHttpApi:
    def _get(self, user: Any, path: str = "/api/presence/online/") -> Any:
        client = Client()
        client.force_login(user)
        return client.get(path)

    async def test_redis_down_is_a_json_503_with_retry_after(
        self, auser_factory: UserFactory, redis_server: RedisServer, short_timeouts: None
    ) -> None:
        alice = await auser_factory("alice", is_staff=True)  # may list everyone
        redis_server.kill()
        try:
            started = time.monotonic()
            response = await sync_to_async(self._get)(alice)
            waited = time.monotonic() - started
        finally:
            redis_server.start()
        assert response.status_code == 503
        assert response["Content-Type"] == "application/json"
        assert response["Retry-After"] == "5"
        assert response.json()["code"] == "unavailable"
        assert waited < 5, waited

    async def test_redis_paused_is_a_json_503_within_seconds(
        self, auser_factory: UserFactory, redis_server: RedisServer, short_timeouts: None
    ) -> None:
        alice = await auser_factory("alice", is_staff=True)  # may list everyone
        await sync_to_async(self._get)(alice)  # a pooled connection exists: no connect wait
        with paused(redis_server):
            started = time.monotonic()
            response = await sync_to_async(self._get)(alice)
            waited = time.monotonic() - started
        assert response.status_code == 503
        assert response.json()["code"] == "unavailable"
        assert waited < 5, waited

    async def test_pages_keep_their_own_error_handling(self, auser_factory: UserFactory) -> None:
        alice = await auser_factory("alice", is_staff=True)  # may list everyone
        response = await sync_to_async(self._get)(alice, "/api/presence/users/999999/")
        assert response.status_code == 404
        assert response.json() == {"error": "no such user"}
