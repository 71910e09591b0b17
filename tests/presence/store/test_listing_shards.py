"""Listings and counts across shards (presence/store/reads.py) against a model.

Users are written straight into several shards' indexes (the keys a connect writes: the
shard's ``users`` index, the user's hash and connection index), live or lapsed; then the
counts, the first page and the cursor walk must equal the model's: exact count, every live
user listed at least once, no lapsed one. On one Redis and on 3 independent primaries
(PRESENCE_REDIS_SHARD_URLS), where the fan-out runs one pipeline per node.
"""

from __future__ import annotations

import asyncio

import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pytest_django.fixtures import Settings

from presence import store

# A user: (shard, live?). Ids are the list positions (unique).
population = st.lists(st.tuples(st.integers(0, 63), st.booleans()), max_size=60)


def write(users: list[tuple[int, bool]], now: int) -> set[int]:
    """Write ``users`` into their shards (through the store's own clients); the live ids."""
    live = set()
    for uid, (shard, alive) in enumerate(users, start=1):
        k, client = store.keys(shard), store.client_for(shard)
        exp = now + 60_000 if alive else now - 1_000
        client.zadd(k.users, {str(uid): exp})
        client.hset(k.user(uid), mapping={"username": f"u{uid}", "status": "online"})
        client.zadd(k.user_conns(uid), {f"c{uid}": exp})
        if alive:
            live.add(uid)
    return live


def walk(limit: int) -> tuple[set[int], int, int]:
    """Every page of the cursor walk: (ids seen, pages, the counts all pages agreed on)."""

    async def run() -> tuple[set[int], int, int]:
        seen: set[int] = set()
        counts, cursor, pages = set(), 0, 0
        while True:
            count, users, cursor = await store.alist_online_page(None, cursor, limit)
            counts.add(count)
            seen.update(u["id"] for u in users)
            pages += 1
            assert pages < 500, "the walk does not end"
            if cursor == 0:
                break
        assert len(counts) == 1
        return seen, pages, counts.pop()

    try:
        return asyncio.run(run())
    finally:
        store.reset_clients()


def check(users: list[tuple[int, bool]], limit: int, flush: list[redis.Redis]) -> None:
    for client in flush:
        client.flushall()
    now = store.now_ms()
    live = write(users, now)
    count, first = store.list_online(limit=limit)
    assert count == len(live)
    assert {u["id"] for u in first} <= live
    assert len(first) == min(limit, len(live))
    assert len({u["id"] for u in first}) == len(first)  # no one twice on a page
    acount, afirst = asyncio.run(store.alist_online(limit=limit))
    store.reset_clients()
    assert (acount, [u["id"] for u in afirst]) == (count, [u["id"] for u in first])
    seen, pages, walked_count = walk(limit)
    assert walked_count == len(live)
    assert seen == live
    # Empty shards are passed over: never more pages than non-empty shards x pages each.
    assert pages <= max(1, len({s for s, _ in users})) * (60 // limit + 2)


SETTINGS = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(users=population, limit=st.integers(1, 25))
def test_one_redis_listing_equals_the_model(
    users: list[tuple[int, bool]], limit: int, r: redis.Redis
) -> None:
    check(users, limit, [r])


@SETTINGS
@given(users=population, limit=st.integers(1, 25))
def test_shard_urls_listing_equals_the_model(
    users: list[tuple[int, bool]], limit: int, redis_shards: list[str], settings: Settings
) -> None:
    settings.PRESENCE_REDIS_SHARD_URLS = redis_shards
    store.reset_clients()
    check(users, limit, [redis.Redis.from_url(url) for url in redis_shards])
    # The users really are spread: each server holds only its shards' keys.
    for url in redis_shards:
        held = redis.Redis.from_url(url, decode_responses=True).keys("*:users")
        for key in held:
            shard = int(key.split(":")[1])
            assert redis_shards[store.jump_hash(shard, 3)] == url


def test_a_page_fills_across_shards(r: redis.Redis) -> None:
    now = store.now_ms()
    write([(2, True), (5, True), (5, True), (9, False)], now)
    # One page takes shard 2's user and goes on into shard 5 (the empty shards passed over);
    # nobody live after it: the walk ends on this page.
    count, users, cursor = asyncio.run(store.alist_online_page(None, 0, 10))
    store.reset_clients()
    assert (count, sorted(u["id"] for u in users), cursor) == (3, [1, 2, 3], 0)
    # Pages of one cut shard 5's one-step ZSCAN in uid order and resume inside it.
    seen = []
    cursor = 0
    for _ in range(3):
        count, users, cursor = asyncio.run(store.alist_online_page(None, cursor, 1))
        store.reset_clients()
        seen += [u["id"] for u in users]
        assert count == 3
    assert (seen, cursor) == ([1, 2, 3], 0)
