"""Cursor pages that fill across shards (presence/store/reads.py, alist_online_page).

Homes flipped: users' keys on their own shard (``user_shard``), rooms' on the room's
(``room_shard``), as after the split; the reads look both up through presence.store.shards,
patched here. Users are written straight into the keys a connect writes. Pages of 1, 7 and
100 must list every live user exactly once, no lapsed one, with the exact count on every
page, filling each page but the last; a page costs three pipelines per node (every index's
count, one ZSCAN step, the users' details; a step more when lapsed members thinned one out),
counted on the client's real pipelines and, on one Redis, in the server's INFO commandstats.
On one Redis, on 3 independent primaries and on a 3-primary Cluster.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from pytest_django.fixtures import Settings
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline

from presence import store
from presence.store import shards
from presence.store.reads import SCAN_ROUNDS
from presence.store.shards import room_shard, user_shard
from tests.support.cluster import ClusterTopology

ROOM = "lobby"


@pytest.fixture(autouse=True)
def flipped(settings: Settings) -> Iterator[None]:
    """user_home/room_home -> the user's and the room's own shard (64 shards)."""
    settings.PRESENCE_SHARDS = 64
    mp = pytest.MonkeyPatch()
    mp.setattr(shards, "user_home", user_shard)
    mp.setattr(shards, "room_home", room_shard)
    store.reset_clients()
    yield
    mp.undo()
    store.reset_clients()


def write(uids: list[int], *, live: bool = True, room: bool = False) -> None:
    """``uids`` online (or lapsed) on their shards, optionally members of ROOM."""
    now = store.now_ms()
    exp = now + 60_000 if live else now - 1_000
    for uid in uids:
        shard = user_shard(uid)
        k, client = store.keys(shard), store.client_for(shard)
        pipe = client.pipeline(transaction=False)
        pipe.zadd(k.users, {str(uid): exp})
        pipe.hset(k.user(uid), mapping={"username": f"u{uid}", "status": "online"})
        pipe.zadd(k.user_conns(uid), {f"c{uid}": exp})
        pipe.execute()
        if room:
            home = room_shard(ROOM)
            store.client_for(home).zadd(store.keys(home).room(ROOM), {str(uid): exp})


class Trips:
    """Pipelines executed (each one round trip to its node), per node, on the real clients."""

    def __init__(self) -> None:
        self.per_node: Counter[str] = Counter()

    def __enter__(self) -> Trips:
        self.mp = pytest.MonkeyPatch()
        plain, cluster = Pipeline.execute, ClusterPipeline.execute
        per_node = self.per_node

        async def plain_execute(pipe: Any, *args: Any, **kwargs: Any) -> Any:
            kw = pipe.connection_pool.connection_kwargs
            per_node[f"{kw.get('host')}:{kw.get('port')}"] += 1
            return await plain(pipe, *args, **kwargs)

        async def cluster_execute(pipe: Any, *args: Any, **kwargs: Any) -> Any:
            # One call: one batch to each node its commands' slots live on (redis-py).
            per_node["cluster"] += 1
            return await cluster(pipe, *args, **kwargs)

        self.mp.setattr(Pipeline, "execute", plain_execute)
        self.mp.setattr(ClusterPipeline, "execute", cluster_execute)
        return self

    def __exit__(self, *exc: object) -> None:
        self.mp.undo()


def walk(room: str | None, limit: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """Every page: (ids in listing order, each page's size, each page's count, the most
    pipelines any node ran for one page)."""

    async def run() -> tuple[list[int], list[int], list[int], list[int]]:
        ids: list[int] = []
        sizes, counts, trips = [], [], []
        cursor = 0
        while True:
            with Trips() as seen:
                count, users, cursor = await store.alist_online_page(room, cursor, limit)
            trips.append(max(seen.per_node.values()))
            ids += [u["id"] for u in users]
            sizes.append(len(users))
            counts.append(count)
            assert len(sizes) < 1000, "the walk does not end"
            if cursor == 0:
                return ids, sizes, counts, trips

    try:
        return asyncio.run(run())
    finally:
        store.reset_clients()


def check_walk(room: str | None, live: set[int], limit: int, *, large: bool = False) -> int:
    ids, sizes, counts, trips = walk(room, limit)
    assert sorted(ids) == sorted(live)  # everyone live, once each, no lapsed one
    assert len(ids) == len(set(ids))
    assert set(counts) == {len(live)}
    if not large:
        # Small indexes (ZSCAN answers each in one step) are cut exactly: full pages.
        assert all(size == limit for size in sizes[:-1]), sizes
        assert 1 <= sizes[-1] <= limit
    else:
        assert all(size >= limit for size in sizes[:-1]), sizes  # filled (a few more: buckets)
    if not large:
        assert max(trips) <= 3, trips
    else:
        # A ZSCAN step that met more lapsed members than the index's average takes another
        # step: at most SCAN_ROUNDS, and most pages need one.
        assert max(trips) <= 2 + SCAN_ROUNDS, trips
        print(f"trips per page ({room}, limit {limit}): {sorted(Counter(trips).items())}")
    return len(sizes)


POPULATION = list(range(1, 301))
LAPSED = list(range(1001, 1041))


def spread() -> set[int]:
    write(POPULATION, room=True)
    write(LAPSED, live=False, room=True)
    assert len({user_shard(uid) for uid in POPULATION}) == 64  # users on every shard
    return set(POPULATION)


@pytest.mark.parametrize("limit", [1, 7, 100])
def test_pages_cover_everyone_once_on_one_redis(limit: int, r: redis.Redis) -> None:
    live = spread()
    pages = check_walk(None, live, limit)
    assert pages == -(-len(live) // limit)  # never a page more than the users need
    check_walk(ROOM, live, limit, large=True)  # 340 members: a hash table


def test_a_page_costs_three_round_trips_and_one_zcount_per_shard(r: redis.Redis) -> None:
    spread()
    r.config_resetstat()
    count, users, cursor = asyncio.run(store.alist_online_page(None, 0, 100))
    store.reset_clients()
    stats: Any = r.info("commandstats")
    assert (count, len(users)) == (300, 100) and cursor
    # Every shard's count, then ZSCAN of the shards that fill the page (about a third of
    # them at ~5 users each), then two reads per listed user.
    assert stats["cmdstat_zcount"]["calls"] == 64 + 100
    assert stats["cmdstat_zscan"]["calls"] <= 30
    assert stats["cmdstat_hmget"]["calls"] == 100


def test_a_large_shard_is_paged_in_zscan_steps(r: redis.Redis) -> None:
    # 400 users on shard 5 (past the listpack limit: a hash table that ZSCAN walks in steps),
    # a few on the others.
    big = [uid for uid in range(1, 40_000) if user_shard(uid) == 5][:400]
    others = [uid for uid in range(50_000, 50_100) if user_shard(uid) != 5]
    write(big)
    write(others)
    check_walk(None, set(big) | set(others), 7, large=True)


def test_a_cut_index_that_grows_past_one_step_lists_the_rest_once(r: redis.Redis) -> None:
    # A page ends inside a small shard (cut in uid order); the shard then grows past one
    # ZSCAN step: the rest of the walk keeps the uid bound, so nobody comes twice.
    first = [uid for uid in range(1, 40_000) if user_shard(uid) == 3][:20]
    write(first)
    _count, users, cursor = asyncio.run(store.alist_online_page(None, 0, 5))
    store.reset_clients()
    listed = [u["id"] for u in users]
    assert listed == sorted(first)[:5]
    more = [uid for uid in range(40_000, 90_000) if user_shard(uid) == 3][:300]
    write(more)
    ids = listed

    async def rest(cursor: int) -> None:
        while cursor:
            _count, page, cursor = await store.alist_online_page(None, cursor, 5)
            ids.extend(u["id"] for u in page)

    asyncio.run(rest(cursor))
    store.reset_clients()
    assert len(ids) == len(set(ids))
    assert set(first) <= set(ids)  # online throughout: listed (once)


@pytest.mark.parametrize("limit", [1, 7, 100])
def test_pages_on_three_primaries(limit: int, redis_shards: list[str], settings: Settings) -> None:
    settings.PRESENCE_REDIS_SHARD_URLS = redis_shards
    store.reset_clients()
    live = spread()
    check_walk(None, live, limit)
    check_walk(ROOM, live, limit, large=True)  # 340 members: a hash table


@pytest.mark.parametrize("limit", [1, 7, 100])
def test_pages_on_a_cluster(limit: int, redis_cluster: ClusterTopology, settings: Settings) -> None:
    settings.PRESENCE_REDIS_CLUSTER_URL = redis_cluster.url
    store.reset_clients()
    live = spread()
    check_walk(None, live, limit)
    check_walk(ROOM, live, limit, large=True)  # 340 members: a hash table
