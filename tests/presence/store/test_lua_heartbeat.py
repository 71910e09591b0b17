"""heartbeat.lua (batched), run against the private Redis through ``presence.store``.

Covers the refresh of every score and key expiry of a connection and its rooms, the per
connection result (1 refreshed, 0 unknown -> 4408), counters riding along, the rescue of a
connection claimed by a sweep, and the reload of the script after the cache was flushed.
A heartbeat changes no one's presence, so it logs nothing.
"""

from __future__ import annotations

import redis

from presence import store
from tests.support.eventlog import close, log_len, log_mark, logged
from tests.support.homes import end_swept, every_shard, room_keys, user_keys
from tests.support.lua_timing import GRACE_MS, TTL_MS, _timing  # noqa: F401 - autouse fixture


async def connect(cid: str, uid: int, now: int) -> None:
    """A connection of user ``uid`` registered at ``now``."""
    await store.connect(cid=cid, uid=uid, username=f"user{uid}", channel="ch", now=now)


def join_room(r: redis.Redis, cid: str, uid: int, room: str, now: int) -> int:
    """room_join_*.lua with an explicit ``now``."""
    return store.room_join_sync(store.ConnRef(cid, uid), room, now=now)


async def heartbeat(
    *conns: store.ConnRef, now: int, counters: dict[str, int] | None = None
) -> list[bool]:
    """heartbeat.lua for a batch of connections through the store."""
    return await store.heartbeat_many(conns, counters, now=now)


def total(r: redis.Redis, counter: str) -> int:
    """``counter`` summed over every shard's stats (what the stats flush adds up): a batch
    counts its heartbeats on each user's shard and carries the counters on one."""
    return sum(int(r.hget(k.stats, counter) or 0) for k in every_shard())


class TestRefresh:
    async def test_moves_every_score_to_now_plus_ttl(self, r: redis.Redis) -> None:
        k, t0 = user_keys(7), store.now_ms()
        await connect("c1", 7, t0)
        join_room(r, "c1", 7, "lobby", t0)

        entries = log_len(r)

        result = await heartbeat(store.ConnRef("c1", 7, ("lobby",)), now=t0 + 10_000)

        exp = t0 + 10_000 + TTL_MS
        assert result == [True]
        assert r.hget(k.conn("c1"), "exp") == str(exp)
        assert r.zscore(k.conns, "c1") == exp
        assert r.zscore(k.users, "7") == exp
        assert r.zscore(k.user_conns(7), "c1") == exp
        assert r.zscore(room_keys("lobby").room("lobby"), "7") == exp
        assert log_len(r) == entries  # nothing to tell anyone

    async def test_extends_every_key_expiry(self, r: redis.Redis) -> None:
        t0, rk = store.now_ms(), room_keys("lobby")
        await connect("c1", 7, t0 - 30_000)
        join_room(r, "c1", 7, "lobby", t0 - 30_000)
        # The connection's keys on the user's shard, its membership's on the room's.
        group = [*user_keys(7).conn_group("c1", 7, []), rk.room("lobby"), rk.room_user("lobby", 7)]
        before = {key: r.pttl(key) for key in group}

        await heartbeat(store.ConnRef("c1", 7, ("lobby",)), now=t0)

        for key in group:
            pttl = r.pttl(key)
            assert pttl > before[key] + 25_000, key
            assert pttl <= TTL_MS + GRACE_MS, key

    async def test_never_lowers_the_user_score_of_a_newer_tab(self, r: redis.Redis) -> None:
        k, t0 = user_keys(7), store.now_ms()
        await connect("old", 7, t0)
        await connect("new", 7, t0 + 20_000)

        await heartbeat(store.ConnRef("old", 7), now=t0 + 5_000)

        assert r.zscore(k.users, "7") == t0 + 20_000 + TTL_MS
        assert r.zscore(k.conns, "old") == t0 + 5_000 + TTL_MS

    async def test_brings_a_lapsed_connection_back(self, r: redis.Redis) -> None:
        t0 = store.now_ms()
        await connect("c1", 7, t0 - TTL_MS - 5_000)
        assert store.user_presence(7) == (None, 0)
        mark = log_mark(r)

        assert await heartbeat(store.ConnRef("c1", 7), now=t0) == [True]
        assert store.user_presence(7) == ("online", 1)
        # No leave was logged for the lapse (nothing ended it), so no join either.
        assert logged(r, since=mark) == []


class TestBatch:
    async def test_one_result_per_connection_in_order(self, r: redis.Redis) -> None:
        k, t0 = user_keys(2), store.now_ms()
        await connect("a", 1, t0)
        await connect("c", 3, t0)

        result = await heartbeat(
            store.ConnRef("a", 1), store.ConnRef("gone", 2), store.ConnRef("c", 3), now=t0 + 1
        )

        assert result == [store.HB_ALIVE, store.HB_LOST, store.HB_ALIVE]
        # The unknown connection left nothing behind.
        assert not r.exists(k.conn("gone"))
        assert r.zscore(k.conns, "gone") is None
        assert r.zscore(k.users, "2") is None

    async def test_an_ended_connection_is_told_from_a_lost_one(self, r: redis.Redis) -> None:
        t0 = store.now_ms()
        await connect("ended", 1, t0)
        await connect("lost", 2, t0)
        await store.end_connections([store.ConnRef("ended", 1)])
        r.delete(user_keys(2).conn("lost"))  # what a failover or an empty restart does

        result = await heartbeat(store.ConnRef("ended", 1), store.ConnRef("lost", 2), now=t0 + 1)

        assert result == [store.HB_ENDED, store.HB_LOST]

    async def test_connections_with_different_room_counts(self, r: redis.Redis) -> None:
        t0 = store.now_ms()
        await connect("a", 1, t0)
        await connect("b", 2, t0)
        for room in ("r1", "r2", "r3"):
            join_room(r, "a", 1, room, t0)
        join_room(r, "b", 2, "r2", t0)

        result = await heartbeat(
            store.ConnRef("a", 1, ("r1", "r2", "r3")), store.ConnRef("b", 2, ("r2",)), now=t0 + 9
        )

        exp = t0 + 9 + TTL_MS
        assert result == [True, True]
        assert [r.zscore(room_keys(x).room(x), "1") for x in ("r1", "r2", "r3")] == [exp] * 3
        assert r.zscore(room_keys("r2").room("r2"), "2") == exp

    async def test_session_ended_returns_false(self, r: redis.Redis) -> None:
        t0 = store.now_ms()
        await connect("c1", 7, t0)
        await store.end_connections([store.ConnRef("c1", 7)], now=t0)

        assert await heartbeat(store.ConnRef("c1", 7), now=t0 + 1) == [False]


class TestCounters:
    async def test_counters_ride_along_and_heartbeats_are_counted(self, r: redis.Redis) -> None:
        t0 = store.now_ms()
        await connect("a", 1, t0)
        await connect("b", 2, t0)

        await heartbeat(
            store.ConnRef("a", 1),
            store.ConnRef("b", 2),
            store.ConnRef("gone", 3),
            now=t0,
            counters={"msg:heartbeat": 3, "err:bad_json": 2},
        )

        assert total(r, "heartbeats") == 2  # only the refreshed ones
        assert total(r, "msg:heartbeat") == 3  # counted once, on one shard
        assert total(r, "err:bad_json") == 2

    async def test_counters_without_connections(self, r: redis.Redis) -> None:
        await store.add_counters({"msg:x": 4})
        await store.add_counters({"msg:x": 1})

        assert total(r, "msg:x") == 5
        assert total(r, "heartbeats") == 0


class TestSweepRescue:
    async def test_heartbeat_rescues_a_claimed_connection(self, r: redis.Redis) -> None:
        k, t0 = user_keys(7), store.now_ms()
        await connect("c1", 7, t0 - TTL_MS - 1_000)  # lapsed a second ago
        lapsed_exp = int(r.zscore(k.conns, "c1") or 0)
        # A sweep claims it: out of the expiry index, into the claim set.
        r.zrem(k.conns, "c1")
        r.zadd(k.sweeping, {"c1": t0 + 30_000})
        r.hset(k.sweeping_exp, "c1", lapsed_exp)

        assert await heartbeat(store.ConnRef("c1", 7), now=t0) == [True]

        assert r.zscore(k.sweeping, "c1") is None
        assert r.hget(k.sweeping_exp, "c1") is None
        assert r.zscore(k.conns, "c1") == t0 + TTL_MS
        # The sweep's end script now leaves it alone, and logs nothing.
        mark = log_mark(r)
        (res,) = end_swept([store.ConnRef("c1", 7)], now=t0 + 1)
        assert res.state == -1
        assert r.exists(k.conn("c1"))
        assert store.user_presence(7) == ("online", 1)
        assert logged(r, since=mark) == []

    async def test_without_heartbeat_the_claimed_connection_ends(self, r: redis.Redis) -> None:
        k, t0 = user_keys(7), store.now_ms()
        await connect("c1", 7, t0 - TTL_MS - 1_000)
        r.zadd(k.sweeping, {"c1": t0 + 30_000})
        r.hset(k.sweeping_exp, "c1", t0 - 1_000)
        mark = log_mark(r)

        (res,) = end_swept([store.ConnRef("c1", 7)], now=t0)

        assert (res.state, res.global_left) == (1, True)
        assert await heartbeat(store.ConnRef("c1", 7), now=t0 + 1) == [False]
        # Ended at its expiry as claimed, not at the time of the sweep.
        assert logged(r, since=mark)[-1] == close(
            "c1", 7, t0, "timeout", at=t0 - 1_000, hb=t0 - TTL_MS - 1_000
        )


class TestScriptCache:
    async def test_reloads_after_script_flush(self, r: redis.Redis) -> None:
        t0 = store.now_ms()
        await connect("c1", 7, t0)
        assert await heartbeat(store.ConnRef("c1", 7), now=t0) == [True]
        r.script_flush()

        assert await heartbeat(store.ConnRef("c1", 7), now=t0 + 1) == [True]
        assert r.zscore(user_keys(7).conns, "c1") == t0 + 1 + TTL_MS


class TestActivity:
    async def test_a_connect_sets_last_active(self, r: redis.Redis) -> None:
        t0 = store.now_ms()
        await connect("c1", 7, t0)

        assert r.zscore(user_keys(7).active, "7") == t0 // 1000

    async def test_the_batch_writes_activity_never_backwards(self, r: redis.Redis) -> None:
        t0, k = store.now_ms(), user_keys(7)
        await connect("c1", 7, t0)

        await store.heartbeat_many([], active={7: t0 // 1000 + 30, 8: 5}, now=t0)
        await store.heartbeat_many([], active={7: t0 // 1000 + 10}, now=t0)

        assert r.zscore(k.active, "7") == t0 // 1000 + 30
        assert r.zscore(user_keys(8).active, "8") == 5

    async def test_a_heartbeat_alone_leaves_it(self, r: redis.Redis) -> None:
        t0, k = store.now_ms(), user_keys(7)
        await connect("c1", 7, t0)

        await heartbeat(store.ConnRef("c1", 7), now=t0 + 90_000)

        assert r.zscore(k.active, "7") == t0 // 1000
