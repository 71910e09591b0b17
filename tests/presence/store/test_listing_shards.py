"""Listings and counts across shards (presence/store/reads.py) against a model.

Users are written straight into several shards' indexes (the keys a connect writes: the
shard's ``users`` index, the user's hash and connection index), live or lapsed; then the
counts, the first page and the cursor walk must equal the model's. Room members come from
the store's own connect and join (so they land wherever the store places a room). The
contract checked, whatever the pages hold: the count is exact and the same on every page,
every live user is listed exactly once over the whole walk, no lapsed one is, and the
cursor reaches 0. How full each page is is the listing's choice and is not asserted.

On every shape, whatever ``--presence-store`` the run has: one Redis, 3 independent
primaries (PRESENCE_REDIS_SHARD_URLS; the fan-out runs one pipeline per node) and a Redis
Cluster of 3 primaries (PRESENCE_REDIS_CLUSTER_URL).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pytest_django.fixtures import Settings

from presence import store
from presence.conf import app_settings
from tests.support.cluster import ClusterTopology

# A user: (shard, live?). Ids are the list positions (unique).
population = st.lists(st.tuples(st.integers(0, 63), st.booleans()), max_size=60)
# A room member: (room, live?). Ids are the list positions.
members = st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), st.booleans()), max_size=25)

SHAPES = ["single", "shards", "cluster"]


@pytest.fixture(params=SHAPES)
def emptied(
    request: pytest.FixtureRequest, settings: Settings, r: redis.Redis
) -> Iterator[Callable[[], None]]:
    """The store on one shape (whatever the run's ``--presence-store``): a callable that
    empties it, for each hypothesis example (the autouse cleaning runs once per test)."""
    settings.PRESENCE_REDIS_CLUSTER_URL = None
    settings.PRESENCE_REDIS_SHARD_URLS = []
    if request.param == "shards":
        urls: list[str] = request.getfixturevalue("redis_shards")
        settings.PRESENCE_REDIS_SHARD_URLS = urls
        nodes = [redis.Redis.from_url(url) for url in urls]

        def flush() -> None:
            for node in nodes:
                node.flushall()

    elif request.param == "cluster":
        cluster: ClusterTopology = request.getfixturevalue("redis_cluster")
        settings.PRESENCE_REDIS_CLUSTER_URL = cluster.url
        flush = cluster.flushall
    else:
        flush = r.flushall  # type: ignore[assignment]
    store.reset_clients()
    yield flush
    store.reset_clients()


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


def walk(room: str | None, limit: int) -> tuple[list[int], int, int]:
    """Every page of the cursor walk: (ids listed, in order, repeats kept; pages; the one
    count all pages agreed on)."""

    async def run() -> tuple[list[int], int, int]:
        listed: list[int] = []
        counts, cursor, pages = set(), 0, 0
        while True:
            count, users, cursor = await store.alist_online_page(room, cursor, limit)
            counts.add(count)
            listed += [int(u["id"]) for u in users]
            pages += 1
            assert pages < 500, "the cursor walk does not end"
            if cursor == 0:
                break
        assert len(counts) == 1, f"pages disagree on the count: {counts}"
        return listed, pages, counts.pop()

    try:
        return asyncio.run(run())
    finally:
        store.reset_clients()


def assert_walk_equals(room: str | None, limit: int, live: set[int], written: int) -> None:
    listed, pages, count = walk(room, limit)
    assert count == len(live)
    assert sorted(listed) == sorted(live), "each live user once, no lapsed one"
    # The cursor ends: at most one page per user written and one per shard passed over.
    assert pages <= written + store.shard_count() + 1


def check(users: list[tuple[int, bool]], limit: int, flush: Callable[[], None]) -> None:
    flush()
    now = store.now_ms()
    live = write(users, now)
    count, first = store.list_online(limit=limit)
    assert count == len(live)
    ids = [int(u["id"]) for u in first]
    assert set(ids) <= live and len(set(ids)) == len(ids) <= limit
    acount, afirst = asyncio.run(store.alist_online(limit=limit))
    store.reset_clients()
    assert acount == count
    assert {int(u["id"]) for u in afirst} <= live and len(afirst) <= limit
    assert_walk_equals(None, limit, live, len(users))


SETTINGS = settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SETTINGS
@given(users=population, limit=st.integers(1, 25))
def test_listing_equals_the_model(
    users: list[tuple[int, bool]], limit: int, emptied: Callable[[], None]
) -> None:
    check(users, limit, emptied)


async def join_members(joined: list[tuple[str, bool]], now: int) -> dict[str, set[int]]:
    """Connect each member and join its room through the store; lapsed ones connected and
    joined a TTL and more ago. The live ids per room."""
    live: dict[str, set[int]] = {}
    past = now - int(app_settings.TTL * 1000) - 5_000
    for uid, (room, alive) in enumerate(joined, start=1):
        at = now if alive else past
        cid = f"c{uid}"
        await store.connect(cid=cid, uid=uid, username=f"u{uid}", channel="ch", now=at)
        assert await store.room_join(store.ConnRef(cid, uid), room, now=at) == 1
        if alive:
            live.setdefault(room, set()).add(uid)
    return live


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(joined=members, limit=st.integers(1, 10))
def test_room_listing_equals_the_model(
    joined: list[tuple[str, bool]], limit: int, emptied: Callable[[], None]
) -> None:
    emptied()
    try:
        live = asyncio.run(join_members(joined, store.now_ms()))
    finally:
        store.reset_clients()
    for room in ("a", "b", "c"):
        expected = live.get(room, set())
        count, first = store.list_online(room, limit=limit)
        assert count == len(expected)
        assert {int(u["id"]) for u in first} <= expected and len(first) <= limit
        assert_walk_equals(room, limit, expected, len(joined))


def test_shard_urls_spread_the_users(redis_shards: list[str], settings: Settings) -> None:
    # The users really are spread: each server holds only its shards' keys.
    settings.PRESENCE_REDIS_CLUSTER_URL = None  # whatever the run's --presence-store
    settings.PRESENCE_REDIS_SHARD_URLS = redis_shards
    store.reset_clients()
    write([(shard, True) for shard in range(64)], store.now_ms())
    for url in redis_shards:
        held = redis.Redis.from_url(url, decode_responses=True).keys("*:users")
        assert held
        for key in held:
            shard = int(key.split(":")[1])
            assert redis_shards[store.jump_hash(shard, 3)] == url
    store.reset_clients()


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
