"""Live control: publishing the disabled set to Redis and each event loop's watcher.

Cross-process propagation through real servers is in tests/e2e/test_handler_propagation.py;
here the pieces run in this process against the private Redis.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from config.embedded_redis import RedisServer
from presence import store
from presence.handlers import HandlerRegistry
from presence.handlers.lifecycle import (
    CONTROL_POLL_INTERVAL,
    ControlWatcher,
    ensure_control_watcher,
)


@pytest.fixture
def reg() -> HandlerRegistry:
    """A registry with one core and two application handlers."""
    reg = HandlerRegistry()

    @reg.handler("demo.core", core=True, version="1")
    async def core(ctx: Any, data: Any) -> None:
        pass

    @reg.handler("demo.a", version="1")
    async def a(ctx: Any, data: Any) -> None:
        pass

    @reg.handler("demo.b", version="1")
    async def b(ctx: Any, data: Any) -> None:
        pass

    return reg


@pytest.fixture
def watchers() -> Iterator[list[ControlWatcher]]:
    started: list[ControlWatcher] = []
    yield started
    for watcher in started:
        watcher.stop()


def publish(*types: str) -> int:
    return store.publish_disabled_handlers(store.get_redis(), lambda: types)


async def until(predicate: Any, limit: float) -> float:
    """Seconds until ``predicate()`` held; fails after ``limit`` seconds."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < limit, "condition not reached in time"
        await asyncio.sleep(0.02)
    return time.monotonic() - started


class TestPublish:
    def test_replaces_the_set_and_bumps_the_version(self, r: redis.Redis) -> None:
        k = store.control_keys()
        assert store.read_handler_control(r) == (None, frozenset())
        assert publish("demo.a", "demo.b") == 1
        assert publish("demo.b") == 2
        assert r.smembers(k.handlers_disabled) == {"demo.b"}
        assert store.read_handler_control(r) == (2, frozenset({"demo.b"}))
        assert publish() == 3
        assert not r.exists(k.handlers_disabled)

    def test_only_if_changed_writes_only_a_difference(self, r: redis.Redis) -> None:
        client, k = store.get_redis(), store.control_keys()
        # Fresh Redis, nothing disabled: nothing to say, nothing written.
        assert store.publish_disabled_handlers(client, list, only_if_changed=True) is None
        assert r.keys(k.tag + ":*") == []
        # Fresh Redis, something disabled in the database: written.
        assert store.publish_disabled_handlers(client, lambda: ["demo.a"], only_if_changed=True)
        assert store.read_handler_control(r) == (1, frozenset({"demo.a"}))
        # Same set again: untouched (watchers see no new version).
        assert (
            store.publish_disabled_handlers(client, lambda: ["demo.a"], only_if_changed=True)
            is None
        )
        # Different: written.
        assert store.publish_disabled_handlers(client, list, only_if_changed=True) == 2
        assert store.read_handler_control(r) == (2, frozenset())

    def test_a_stale_reader_loses_to_a_concurrent_publisher(self, r: redis.Redis) -> None:
        """A publisher that read the database before another published must read again."""
        reading, published = threading.Event(), threading.Event()
        reads: list[tuple[str, ...]] = []
        db_state = ["demo.a"]

        def slow_read() -> list[str]:
            snapshot = list(db_state)  # the "database query"
            reads.append(tuple(snapshot))
            if len(reads) == 1:
                reading.set()
                published.wait(5)  # meanwhile an operator changes the database and publishes
            return snapshot

        def operator() -> None:
            reading.wait(5)
            db_state[:] = ["demo.b"]
            publish("demo.b")
            published.set()

        t = threading.Thread(target=operator)
        t.start()
        store.publish_disabled_handlers(store.get_redis(), slow_read)
        t.join(5)
        assert reads == [("demo.a",), ("demo.b",)]  # the first EXEC failed on the WATCH
        assert r.smembers(store.control_keys().handlers_disabled) == {"demo.b"}


class TestWatcher:
    async def test_applies_published_changes_within_the_poll_interval(
        self, reg: HandlerRegistry, watchers: list[ControlWatcher]
    ) -> None:
        watcher = await ensure_control_watcher(reg)
        watchers.append(watcher)
        publish("demo.a", "demo.core")
        took = await until(lambda: reg.is_disabled("demo.a"), 2)
        assert took < CONTROL_POLL_INTERVAL + 0.3
        assert not reg.is_disabled("demo.core")  # core is never disabled
        publish("demo.b")
        await until(lambda: reg.disabled == {"demo.b"}, 2)
        publish()
        await until(lambda: reg.disabled == frozenset(), 2)

    async def test_one_watcher_per_event_loop(
        self, reg: HandlerRegistry, watchers: list[ControlWatcher]
    ) -> None:
        first, second = await asyncio.gather(
            ensure_control_watcher(reg), ensure_control_watcher(reg)
        )
        watchers.append(first)
        assert first is second

    async def test_first_read_happens_before_serving(
        self, reg: HandlerRegistry, watchers: list[ControlWatcher]
    ) -> None:
        publish("demo.a")
        watcher = await ensure_control_watcher(reg)
        watchers.append(watcher)
        assert reg.is_disabled("demo.a")  # no poll interval to wait for

    async def test_nothing_published_keeps_the_local_state(
        self, reg: HandlerRegistry, watchers: list[ControlWatcher]
    ) -> None:
        """An emptied Redis (restart) must not silently enable what operators disabled."""
        reg.set_disabled(frozenset({"demo.a"}))
        watcher = ControlWatcher(reg)
        assert await watcher.refresh() is False
        assert reg.disabled == {"demo.a"}

    async def test_survives_a_redis_outage(
        self,
        reg: HandlerRegistry,
        watchers: list[ControlWatcher],
        redis_server: RedisServer,
    ) -> None:
        publish("demo.a")
        watcher = await ensure_control_watcher(reg)
        watchers.append(watcher)
        redis_server.kill()
        try:
            await asyncio.sleep(CONTROL_POLL_INTERVAL * 2)
            assert reg.disabled == {"demo.a"}  # last known state kept
        finally:
            redis_server.start()
        publish("demo.b")
        await until(lambda: reg.disabled == {"demo.b"}, 3)
