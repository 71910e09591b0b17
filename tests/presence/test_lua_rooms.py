"""room_join.lua and room_leave.lua, run against the private Redis.

Covers join/leave return codes (join and leave events only for a user's first / last
connection in a room), unknown connections, lapsed members, key expiry, and room listings.
"""

from __future__ import annotations

import redis

from presence import store
from tests.presence.lua_timing import GRACE_MS, TTL_MS, _timing  # noqa: F401 - autouse fixture


async def connect(cid: str, uid: int, now: int | None = None) -> store.ConnRef:
    await store.connect(
        store.get_async_redis(), cid=cid, uid=uid, username=f"user{uid}", channel="ch", now=now
    )
    return store.ConnRef(cid, uid)


async def join(conn: store.ConnRef, room: str) -> int:
    return await store.room_join(store.get_async_redis(), conn, room)


async def leave(conn: store.ConnRef, room: str) -> bool:
    return await store.room_leave(store.get_async_redis(), conn, room)


class TestJoin:
    async def test_first_join_writes_membership(self, r: redis.Redis) -> None:
        k = store.keys()
        conn = await connect("c1", 7)
        exp = float(r.hget(k.conn("c1"), "exp") or 0)

        assert await join(conn, "lobby") == 1

        assert r.smembers(k.conn_rooms("c1")) == {"lobby"}
        assert r.smembers(k.room_user("lobby", 7)) == {"c1"}
        assert r.zscore(k.room("lobby"), "7") == exp

    async def test_join_sets_key_expiry(self, r: redis.Redis) -> None:
        k = store.keys()
        conn = await connect("c1", 7)

        await join(conn, "lobby")

        for key in (k.conn_rooms("c1"), k.room("lobby"), k.room_user("lobby", 7)):
            assert TTL_MS + GRACE_MS - 2_000 < r.pttl(key) <= TTL_MS + GRACE_MS, key

    async def test_same_connection_twice(self, r: redis.Redis) -> None:
        conn = await connect("c1", 7)
        await join(conn, "lobby")

        assert await join(conn, "lobby") == 0
        assert r.scard(store.keys().room_user("lobby", 7)) == 1

    async def test_second_tab_does_not_join_again(self, r: redis.Redis) -> None:
        k = store.keys()
        first, second = await connect("c1", 7), await connect("c2", 7)
        await join(first, "lobby")

        assert await join(second, "lobby") == 0
        assert r.smembers(k.room_user("lobby", 7)) == {"c1", "c2"}
        assert r.zcard(k.room("lobby")) == 1

    async def test_other_user_joins(self) -> None:
        await join(await connect("c1", 1), "lobby")

        assert await join(await connect("c2", 2), "lobby") == 1

    async def test_unknown_connection_writes_nothing(self, r: redis.Redis) -> None:
        assert await join(store.ConnRef("ghost", 9), "lobby") == -1

        assert r.keys("*") == []

    async def test_lapsed_member_does_not_count_as_in_the_room(self, r: redis.Redis) -> None:
        k, now = store.keys(), store.now_ms()
        await connect("old", 7, now - TTL_MS - 1_000)
        keys_old = [k.conn("old"), k.conn_rooms("old"), k.room("lobby"), k.room_user("lobby", 7)]
        store.script("room_join").run(r, keys_old, [now - TTL_MS, GRACE_MS, "old", 7, "lobby"])

        assert await join(await connect("new", 7), "lobby") == 1


class TestLeave:
    async def test_last_connection_leaves(self, r: redis.Redis) -> None:
        k = store.keys()
        conn = await connect("c1", 7)
        await join(conn, "lobby")

        assert await leave(conn, "lobby") is True

        assert r.zscore(k.room("lobby"), "7") is None
        assert r.scard(k.conn_rooms("c1")) == 0
        assert r.scard(k.room_user("lobby", 7)) == 0

    async def test_leave_a_room_never_joined(self) -> None:
        conn = await connect("c1", 7)
        await join(conn, "a")

        assert await leave(conn, "b") is False

    async def test_leave_twice(self) -> None:
        conn = await connect("c1", 7)
        await join(conn, "a")
        await leave(conn, "a")

        assert await leave(conn, "a") is False

    async def test_two_tabs_leave_once(self, r: redis.Redis) -> None:
        first, second = await connect("c1", 7), await connect("c2", 7)
        await join(first, "lobby")
        await join(second, "lobby")

        assert await leave(first, "lobby") is False
        assert r.zscore(store.keys().room("lobby"), "7") is not None
        assert await leave(second, "lobby") is True

    async def test_rejoin_after_leave_joins_again(self) -> None:
        conn = await connect("c1", 7)
        await join(conn, "lobby")
        await leave(conn, "lobby")

        assert await join(conn, "lobby") == 1

    async def test_raw_evalsha(self, r: redis.Redis) -> None:
        k = store.keys()
        conn = await connect("c1", 7)
        await join(conn, "lobby")
        sha = r.script_load(store.script("room_leave").source)
        ks = [k.conn_rooms("c1"), k.room("lobby"), k.room_user("lobby", 7)]

        assert r.evalsha(sha, 3, *ks, "c1", 7, "lobby") == 1
        assert r.evalsha(sha, 3, *ks, "c1", 7, "lobby") == 0


class TestRoomListing:
    async def test_lists_room_members_only(self, r: redis.Redis) -> None:
        a, b = await connect("a", 1), await connect("b", 2)
        await connect("c", 3)
        await join(a, "lobby")
        await join(b, "lobby")
        await join(b, "other")

        count, users = store.list_online(r, "lobby")

        assert count == 2
        assert sorted(u["id"] for u in users) == [1, 2]
        assert store.list_online(r, "other")[0] == 1
        assert store.list_online(r, "empty") == (0, [])
        assert store.list_online(r)[0] == 3
