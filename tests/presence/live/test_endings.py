"""The process's end queue (presence/live/endings.py) against the real test Redis.

Ends that arrive together share one round trip (one end.lua call per user shard, all in one
pipeline: the test Redis is one node); an end Redis cannot take now (the server is
stopped with SIGSTOP) is kept and written once it answers; the queue is bounded and makes
closing sockets wait for room; a shutdown drains it within its budget.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis

from config.embedded_redis import RedisServer
from presence import store
from presence.live.endings import EndQueue
from presence.live.lifespan import drain_endings
from tests.support.eventlog import logged
from tests.support.homes import every_shard, online_uids
from tests.support.wire import counting_script_trips

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def short_bound(settings: Any) -> Iterator[None]:
    settings.PRESENCE_REDIS_SOCKET_TIMEOUT = 0.3
    store.reset_clients()  # the cached clients were built with the default timeout
    yield
    store.reset_clients()


@contextmanager
def paused(server: RedisServer) -> Iterator[None]:
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


async def connected(n: int, *, users: int | None = None) -> list[store.ConnRef]:
    refs = []
    for i in range(n):
        uid = i % (users or n) + 1
        await store.connect(cid=f"c{i}", uid=uid, username=f"u{uid}", channel="ch")
        refs.append(store.ConnRef(f"c{i}", uid, ()))
    # Listed where the ends must find them (the checks of "none left" below are not vacuous).
    assert listed_conns(store.get_redis()) == n
    return refs


def evalsha_calls(r: redis.Redis) -> int:
    stats = r.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def listed_conns(r: redis.Redis) -> int:
    """Connections listed in every shard's index together."""
    return sum(r.zcard(k.conns) for k in every_shard())


async def test_ends_that_arrive_together_share_one_script_call(r: redis.Redis) -> None:
    """One script call per user shard of the batch, all in one round trip."""
    refs = await connected(150)
    queue = EndQueue()
    await queue.end(refs[0], reason="closed")  # the script is loaded: only EVALSHAs follow
    before = evalsha_calls(r)

    with counting_script_trips() as trips:
        results = await asyncio.gather(*(queue.end(ref, reason="closed") for ref in refs[1:]))

    assert [res.state if res else None for res in results] == [1] * 149
    # In no room: the user halves alone, one end.lua per user shard, one pipeline.
    assert evalsha_calls(r) - before == len({store.user_home(ref.uid) for ref in refs[1:]})
    assert trips.total() == 1
    assert online_uids(r) == set()


async def test_batches_hold_one_reason_each(r: redis.Redis) -> None:
    refs = await connected(4)
    queue = EndQueue()
    reasons = ["closed", "kicked", "closed", "error"]
    await asyncio.gather(
        *(queue.end(ref, reason=why) for ref, why in zip(refs, reasons, strict=True))
    )
    closes = {entry["c"]: entry["why"] for entry in logged(r) if entry["k"] == "close"}
    assert closes == {ref.cid: why for ref, why in zip(refs, reasons, strict=True)}


async def test_an_end_redis_cannot_take_now_is_written_when_it_answers(
    r: redis.Redis, redis_server: RedisServer, short_bound: None
) -> None:
    refs = await connected(30, users=10)
    queue = EndQueue()
    with paused(redis_server):
        results = await asyncio.gather(*(queue.end(ref, reason="closed") for ref in refs))
        assert results == [None] * 30  # not written within the bound: still queued
        assert len(queue) == 30
        await asyncio.sleep(1.0)
    assert await queue.drain(5)
    assert len(queue) == 0
    assert online_uids(r) == set()
    assert listed_conns(r) == 0


async def test_a_full_queue_makes_closing_sockets_wait(
    r: redis.Redis, redis_server: RedisServer, short_bound: None, settings: Any
) -> None:
    settings.PRESENCE_END_QUEUE_MAX = 5
    refs = await connected(12)
    queue = EndQueue()
    with paused(redis_server):
        ends = [asyncio.ensure_future(queue.end(ref, reason="closed", wait=0)) for ref in refs]
        await asyncio.sleep(0.5)
        assert len(queue) == 5  # the other seven wait for room; nothing is dropped
        assert sum(end.done() for end in ends) == 5
    await asyncio.wait_for(asyncio.gather(*ends), 10)
    assert await queue.drain(5)
    assert listed_conns(r) == 0


async def test_a_shutdown_drains_the_queue_within_its_budget(
    r: redis.Redis, redis_server: RedisServer, short_bound: None, settings: Any
) -> None:
    from presence.live.endings import get_end_queue

    settings.PRESENCE_END_DRAIN_TIMEOUT = 5.0
    refs = await connected(20)
    queue = get_end_queue()
    with paused(redis_server):
        await asyncio.gather(*(queue.end(ref, reason="server_shutdown", wait=0) for ref in refs))
        assert len(queue) == 20
        resume = asyncio.get_running_loop().call_later(
            0.5, os.kill, redis_server.process.pid, signal.SIGCONT
        )
        await drain_endings()
        resume.cancel()
    assert len(queue) == 0
    assert listed_conns(r) == 0
