"""The presence store's clients on a real Sentinel topology: REDIS_URL in the Sentinel form
reaches the primary, and the sync and asyncio clients follow it through a failover."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis

from presence import store
from presence.store.clients import SENTINEL_TIMEOUT
from tests.support.sentinel import SentinelTopology

pytestmark = pytest.mark.slow

# A failover is over for clients once the sentinels name the new primary; connections to the
# old one fail (closed, or READONLY once it is demoted) and the client's retry reconnects.
FOLLOW_WITHIN = 10.0


def write_until_ok(write: Callable[[], Any]) -> int:
    """Call ``write`` until it succeeds (bounded); return how many attempts failed."""
    deadline = time.monotonic() + FOLLOW_WITHIN
    failures = 0
    while True:
        try:
            write()
            return failures
        except redis.RedisError:
            failures += 1
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


async def awrite_until_ok(write: Callable[[], Awaitable[Any]]) -> int:
    deadline = time.monotonic() + FOLLOW_WITHIN
    failures = 0
    while True:
        try:
            async with store.bounded():
                await write()
            return failures
        except (redis.RedisError, TimeoutError):
            failures += 1
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


@pytest.fixture
def sentinel_url(sentinel_topology: SentinelTopology, settings: Any) -> SentinelTopology:
    """Point the presence store at the topology (Sentinel URL, db 2)."""
    settings.REDIS_URL = sentinel_topology.url_for_db(2)
    store.reset_clients()
    return sentinel_topology


async def test_clients_reach_the_primary_and_follow_a_planned_failover(
    sentinel_url: SentinelTopology,
) -> None:
    topology = sentinel_url
    sync, aio = store.get_redis(), store.get_async_redis()
    sync.set("sync", "1")
    await aio.set("async", "1")
    primary = topology.primary_client(db=2)
    assert (primary.get("sync"), primary.get("async")) == ("1", "1")
    assert await aio.get("sync") == "1"  # both clients speak to db 2 of the same primary

    new_primary = await asyncio.to_thread(topology.failover)

    # The same cached clients (their pooled connections went to the old primary, now a
    # replica that answers READONLY) write to the new primary.
    await asyncio.to_thread(write_until_ok, lambda: sync.set("sync", "2"))
    await awrite_until_ok(lambda: aio.set("async", "2"))
    assert store.get_redis() is sync and store.get_async_redis() is aio
    on_new = topology.node_at(new_primary).client(db=2)
    assert (on_new.get("sync"), on_new.get("async")) == ("2", "2")


async def test_clients_follow_an_unplanned_failover(sentinel_url: SentinelTopology) -> None:
    topology = sentinel_url
    sync, aio = store.get_redis(), store.get_async_redis()
    sync.set("k", "before")
    assert await aio.get("k") == "before"
    replica = topology.replica()

    await asyncio.to_thread(topology.kill_primary)  # kill -9; waits for the promotion

    await asyncio.to_thread(write_until_ok, lambda: sync.set("sync", "after"))
    await awrite_until_ok(lambda: aio.set("async", "after"))
    promoted = replica.client(db=2)
    assert (promoted.get("sync"), promoted.get("async")) == ("after", "after")


def test_a_plain_url_still_uses_from_url(redis_server: Any, settings: Any) -> None:
    settings.REDIS_URL = redis_server.url
    store.reset_clients()
    client = store.get_redis()
    assert not type(client.connection_pool).__name__.startswith("Sentinel")
    assert client.ping()


def test_the_sentinel_client_keeps_the_bounded_waits(sentinel_url: SentinelTopology) -> None:
    from presence.conf import app_settings

    pool = store.get_redis().connection_pool
    assert type(pool).__name__ == "SentinelConnectionPool"
    kwargs = pool.connection_kwargs
    assert kwargs["socket_timeout"] == app_settings.REDIS_SOCKET_TIMEOUT
    assert kwargs["socket_connect_timeout"] == app_settings.REDIS_CONNECT_TIMEOUT
    assert kwargs["retry"] is not None and kwargs["db"] == 2
    # ... and so do the sentinels themselves (asked on every new connection).
    sentinel = pool.sentinel_manager.sentinels[0]
    assert sentinel.connection_pool.connection_kwargs["socket_timeout"] == min(
        app_settings.REDIS_SOCKET_TIMEOUT, SENTINEL_TIMEOUT
    )


async def test_a_hung_sentinel_is_passed_over(sentinel_url: SentinelTopology) -> None:
    first = sentinel_url.sentinels[0]
    first.pause()  # SIGSTOP: connections open, questions never answered
    try:
        started = time.monotonic()
        store.get_redis().set("sync", "1")  # a new connection: asks the sentinels
        async with store.bounded():
            await store.get_async_redis().set("async", "1")
        elapsed = time.monotonic() - started
    finally:
        first.resume()
    assert elapsed < 2 * SENTINEL_TIMEOUT + 1.5
    assert sentinel_url.primary_client(db=2).mget("sync", "async") == ["1", "1"]
