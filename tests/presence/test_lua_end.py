"""end.lua, run against the private Redis through ``presence.store``.

Covers graceful close ('closed') and sweep ('swept') modes: what gets deleted, the global and
per-room leaves (last live tab only, computed exactly once however connections are ended),
the score of a user who stays online, claims, and the single-owner rule between a closing
socket and a sweep.
"""

from __future__ import annotations

import redis

from presence import store
from tests.presence.lua_timing import GRACE_MS, TTL_MS, _timing  # noqa: F401 - autouse fixture


async def connect(cid: str, uid: int, now: int, rooms: tuple[str, ...] = ()) -> store.ConnRef:
    await store.connect(
        store.get_async_redis(), cid=cid, uid=uid, username=f"user{uid}", channel="ch", now=now
    )
    k = store.keys()
    for room in rooms:
        store.script("room_join").run(
            store.get_redis(),
            [k.conn(cid), k.conn_rooms(cid), k.room(room), k.room_user(room, uid)],
            [now, GRACE_MS, cid, uid, room],
        )
    return store.ConnRef(cid, uid, rooms)


async def close(*conns: store.ConnRef, now: int) -> list[store.EndResult]:
    return await store.end_connections(store.get_async_redis(), conns, now=now)


class TestClosed:
    async def test_last_connection_leaves_and_is_deleted(self, r: redis.Redis) -> None:
        k, t0 = store.keys(), store.now_ms()
        conn = await connect("c1", 7, t0, rooms=("a", "b"))

        (res,) = await close(conn, now=t0 + 1)

        assert res == store.EndResult(cid="c1", state=1, global_left=True, rooms_left=["a", "b"])
        assert not r.exists(k.conn("c1"), k.conn_rooms("c1"))
        assert r.zscore(k.conns, "c1") is None
        assert r.zscore(k.users, "7") is None
        assert r.zcard(k.user_conns(7)) == 0
        assert r.zcard(k.room("a")) == r.zcard(k.room("b")) == 0
        assert r.scard(k.room_user("a", 7)) == 0
        assert r.hget(k.stats, "disconnects") == "1"

    async def test_second_end_is_a_noop(self, r: redis.Redis) -> None:
        k, t0 = store.keys(), store.now_ms()
        conn = await connect("c1", 7, t0, rooms=("a",))
        await close(conn, now=t0 + 1)

        (res,) = await close(conn, now=t0 + 2)

        assert res == store.EndResult(cid="c1", state=0, global_left=False, rooms_left=[])
        assert r.hget(k.stats, "disconnects") == "1"

    async def test_closing_one_of_two_tabs_does_not_leave(self, r: redis.Redis) -> None:
        k, t0 = store.keys(), store.now_ms()
        first = await connect("c1", 7, t0 + 5_000, rooms=("a",))
        second = await connect("c2", 7, t0, rooms=("a",))

        (res,) = await close(first, now=t0 + 6_000)

        assert (res.state, res.global_left, res.rooms_left) == (1, False, [])
        # Still online, scored by the remaining tab (lowered from the closed one's expiry).
        assert r.zscore(k.users, "7") == t0 + TTL_MS
        assert r.smembers(k.room_user("a", 7)) == {"c2"}
        assert r.zscore(k.room("a"), "7") is not None

        (res,) = await close(second, now=t0 + 7_000)
        assert (res.state, res.global_left, res.rooms_left) == (1, True, ["a"])

    async def test_leaves_only_rooms_no_other_tab_is_in(self) -> None:
        t0 = store.now_ms()
        first = await connect("c1", 7, t0, rooms=("a", "b", "c"))
        await connect("c2", 7, t0, rooms=("b",))

        (res,) = await close(first, now=t0 + 1)

        assert res.global_left is False
        assert sorted(res.rooms_left) == ["a", "c"]

    async def test_other_users_are_untouched(self, r: redis.Redis) -> None:
        k, t0 = store.keys(), store.now_ms()
        mine = await connect("c1", 1, t0, rooms=("a",))
        await connect("c2", 2, t0, rooms=("a",))

        (res,) = await close(mine, now=t0 + 1)

        assert res.rooms_left == ["a"]
        assert r.zrange(k.room("a"), 0, -1) == ["2"]
        assert r.zrange(k.users, 0, -1) == ["2"]

    async def test_closing_removes_a_sweep_claim(self, r: redis.Redis) -> None:
        k, t0 = store.keys(), store.now_ms()
        conn = await connect("c1", 7, t0)
        r.zadd(k.sweeping, {"c1": t0 + 30_000})
        r.hset(k.sweeping_exp, "c1", t0)

        (res,) = await close(conn, now=t0 + 1)

        assert res.state == 1
        assert r.zscore(k.sweeping, "c1") is None
        assert r.hget(k.sweeping_exp, "c1") is None


class TestLeaveComputedOnce:
    async def test_lapsed_tabs_ended_one_by_one(self, r: redis.Redis) -> None:
        t0 = store.now_ms()
        old = t0 - TTL_MS - 1_000
        a = await connect("c1", 7, old, rooms=("x",))
        b = await connect("c2", 7, old, rooms=("x",))

        (first,) = store.end_swept_connections(r, [a], now=t0)
        (second,) = store.end_swept_connections(r, [b], now=t0)

        assert (first.state, first.global_left) == (1, True)
        assert (second.state, second.global_left, second.rooms_left) == (1, False, ["x"])
        assert first.rooms_left == []  # c2 was still in the room's member set

    async def test_lapsed_tabs_ended_in_one_batch(self, r: redis.Redis) -> None:
        t0 = store.now_ms()
        old = t0 - TTL_MS - 1_000
        a = await connect("c1", 7, old, rooms=("x",))
        b = await connect("c2", 7, old, rooms=("x",))

        results = store.end_swept_connections(r, [a, b], now=t0)

        assert [res.state for res in results] == [1, 1]
        assert sum(res.global_left for res in results) == 1
        assert sum(res.rooms_left.count("x") for res in results) == 1
        assert r.hget(store.keys().stats, "disconnects") == "2"

    async def test_closing_the_live_tab_leaves_when_the_other_lapsed(self, r: redis.Redis) -> None:
        t0 = store.now_ms()
        lapsed = await connect("c1", 7, t0 - TTL_MS - 1_000)
        live = await connect("c2", 7, t0)

        (res,) = await close(live, now=t0 + 1)
        (later,) = store.end_swept_connections(r, [lapsed], now=t0 + 2)

        assert res.global_left is True
        assert (later.state, later.global_left) == (1, False)

    async def test_close_and_sweep_race_has_one_owner(self, r: redis.Redis) -> None:
        t0 = store.now_ms()
        conn = await connect("c1", 7, t0 - TTL_MS - 1_000)

        (swept,) = store.end_swept_connections(r, [conn], now=t0)
        (closed,) = await close(conn, now=t0 + 1)

        assert swept.state == 1
        assert closed.state == 0
        assert closed.global_left is False


class TestSwept:
    async def test_live_unclaimed_connection_is_not_ended(self, r: redis.Redis) -> None:
        k, t0 = store.keys(), store.now_ms()
        conn = await connect("c1", 7, t0)

        (res,) = store.end_swept_connections(r, [conn], now=t0 + 1)

        assert res.state == -1
        assert r.exists(k.conn("c1"))
        assert r.hget(k.stats, "disconnects") is None

    async def test_claimed_connection_is_ended(self, r: redis.Redis) -> None:
        k, t0 = store.keys(), store.now_ms()
        conn = await connect("c1", 7, t0 - TTL_MS - 1_000, rooms=("x",))
        r.zrem(k.conns, "c1")
        r.zadd(k.sweeping, {"c1": t0 + 30_000})

        (res,) = store.end_swept_connections(r, [conn], now=t0)

        assert res == store.EndResult(cid="c1", state=1, global_left=True, rooms_left=["x"])
        assert not r.exists(k.conn("c1"))

    async def test_raw_evalsha_result_shape(self, r: redis.Redis) -> None:
        """KEYS/ARGV/return exactly as the script header documents them."""
        k, t0 = store.keys(), store.now_ms()
        await connect("c1", 7, t0, rooms=("a",))
        sha = r.script_load(store.script("end").source)
        ks = [*k.fixed(), *k.conn_group("c1", 7, ["a"])]

        out = r.evalsha(sha, len(ks), *ks, t0 + 1, "closed", 1, "c1", 7, 1, "a")

        assert out == [["c1", 1, 1, "a"]]
