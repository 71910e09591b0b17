"""The halves of a room join and leave (room_join_user/room_join_room.lua,
room_leave_user/room_leave_room.lua), run against the private Redis; status.lua and publish.lua.

Covers join/leave return codes (join and leave events only for a user's first / last
connection in a room, as logged), unknown connections, lapsed members, key expiry, and room
listings; then the room-scoped events of status.lua (global and per room) and publish.lua.
"""

from __future__ import annotations

import json

import redis

from presence import store
from tests.support.eventlog import Entry, Mark, log_entries, log_len, log_mark, logged
from tests.support.eventlog import join as joined
from tests.support.homes import room_beside, room_keys, user_keys
from tests.support.lua_timing import GRACE_MS, TTL_MS, _timing  # noqa: F401 - autouse fixture


async def connect(cid: str, uid: int, now: int | None = None) -> store.ConnRef:
    """A connection of user ``uid`` (named ``user<uid>``), at ``now`` or the clock's now."""
    await store.connect(cid=cid, uid=uid, username=f"user{uid}", channel="ch", now=now)
    return store.ConnRef(cid, uid)


async def join(conn: store.ConnRef, room: str, now: int | None = None) -> int:
    """room_join_*.lua through the store: 1 the user joined, 0 already in, -1 unknown."""
    return await store.room_join(conn, room, now=now)


async def leave(conn: store.ConnRef, room: str) -> bool:
    """room_leave_*.lua through the store: True when the user left the room altogether."""
    return await store.room_leave(conn, room)


def logged_by_clock(r: redis.Redis, since: Mark, before: int, after: int) -> list[Entry]:
    """The entries logged after ``since``, less ``t`` once checked to lie in [before, after]:
    for scripts the store hands the clock's now (room_leave, status, publish)."""
    entries = logged(r, since=since)
    assert all(before <= int(e["t"]) <= after for e in entries), entries
    return [{name: value for name, value in e.items() if name != "t"} for e in entries]


class TestJoin:
    async def test_first_join_writes_membership(self, r: redis.Redis) -> None:
        uk, rk = user_keys(7), room_keys("lobby")
        conn = await connect("c1", 7)
        exp = float(r.hget(uk.conn("c1"), "exp") or 0)
        mark, now = log_mark(r), store.now_ms()

        assert await join(conn, "lobby", now) == 1

        # The user half on the user's shard, the room half on the room's.
        assert r.smembers(uk.conn_rooms("c1")) == {"lobby"}
        assert r.smembers(rk.room_user("lobby", 7)) == {"c1"}
        assert r.zscore(rk.room("lobby"), "7") == exp
        assert logged(r, since=mark) == [joined("lobby", 7, now, occupied=True)]

    async def test_join_carries_the_users_status(self, r: redis.Redis) -> None:
        conn = await connect("c1", 7)
        await store.set_status(7, "user7", "busy")
        mark, now = log_mark(r), store.now_ms()

        await join(conn, "lobby", now)

        assert logged(r, since=mark) == [joined("lobby", 7, now, status="busy", occupied=True)]

    async def test_join_sets_key_expiry(self, r: redis.Redis) -> None:
        uk, rk = user_keys(7), room_keys("lobby")
        conn = await connect("c1", 7)

        await join(conn, "lobby")

        for key in (uk.conn_rooms("c1"), rk.room("lobby"), rk.room_user("lobby", 7)):
            assert TTL_MS + GRACE_MS - 2_000 < r.pttl(key) <= TTL_MS + GRACE_MS, key

    async def test_same_connection_twice(self, r: redis.Redis) -> None:
        conn = await connect("c1", 7)
        await join(conn, "lobby")
        entries = log_len(r)

        assert await join(conn, "lobby") == 0
        assert r.scard(room_keys("lobby").room_user("lobby", 7)) == 1
        assert log_len(r) == entries

    async def test_second_tab_does_not_join_again(self, r: redis.Redis) -> None:
        k = room_keys("lobby")
        first, second = await connect("c1", 7), await connect("c2", 7)
        await join(first, "lobby")
        entries = log_len(r)

        assert await join(second, "lobby") == 0
        assert r.smembers(k.room_user("lobby", 7)) == {"c1", "c2"}
        assert r.zcard(k.room("lobby")) == 1
        assert log_len(r) == entries  # the user is in the room already

    async def test_other_user_joins(self, r: redis.Redis) -> None:
        await join(await connect("c1", 1), "lobby")
        second = await connect("c2", 2)
        mark, now = log_mark(r), store.now_ms()

        assert await join(second, "lobby", now) == 1
        assert logged(r, since=mark) == [joined("lobby", 2, now)]

    async def test_unknown_connection_writes_nothing(self, r: redis.Redis) -> None:
        assert await join(store.ConnRef("ghost", 9), "lobby") == -1

        assert r.keys("*") == []

    async def test_lapsed_member_does_not_count_as_in_the_room(self, r: redis.Redis) -> None:
        now = store.now_ms()
        old = await connect("old", 7, now - TTL_MS - 1_000)
        assert store.room_join_sync(old, "lobby", now=now - TTL_MS) == 1
        new = await connect("new", 7)
        mark = log_mark(r)

        assert await join(new, "lobby", now) == 1
        # x: the lapsed entry was never logged leaving (the hooks send no second room.join).
        assert logged(r, since=mark) == [joined("lobby", 7, now, relisted=True)]

    async def test_raw_evalsha(self, r: redis.Redis) -> None:
        """KEYS/ARGV/return of both halves exactly as the script headers document them."""
        uk, rk, now = user_keys(7), room_keys("lobby"), store.now_ms()
        await connect("c1", 7)
        exp = r.hget(uk.conn("c1"), "exp")
        user_sha = r.script_load(store.script("room_join_user").source)
        room_sha = r.script_load(store.script("room_join_room").source)
        user_ks = [uk.conn("c1"), uk.conn_rooms("c1"), uk.user(7)]
        room_ks = [rk.room("lobby"), rk.room_user("lobby", 7), rk.rooms, rk.events]
        mark = log_mark(r)

        assert r.evalsha(user_sha, 3, *user_ks, GRACE_MS, "lobby") == [exp, "user7", "online", 1]
        room_args = [now, GRACE_MS, "c1", 7, "lobby", 1_000, exp, "user7", "online"]
        assert r.evalsha(room_sha, 4, *room_ks, *room_args) == 1
        # A retry: the user half finds the room noted, the room half changes nothing.
        assert r.evalsha(user_sha, 3, *user_ks, GRACE_MS, "lobby") == [exp, "user7", "online", 0]
        assert r.evalsha(room_sha, 4, *room_ks, *room_args) == 0
        assert logged(r, since=mark) == [joined("lobby", 7, now, occupied=True)]
        assert r.zscore(rk.rooms, "lobby") == float(exp or 0)
        assert r.evalsha(user_sha, 3, uk.conn("x"), uk.conn_rooms("x"), uk.user(7), 1, "a") == -1

    async def test_retry_after_the_user_half_alone_joins_once(self, r: redis.Redis) -> None:
        """A join whose first attempt died between the halves: the retry finishes it."""
        k, now = user_keys(7), store.now_ms()
        conn = await connect("c1", 7)
        user_ks = [k.conn("c1"), k.conn_rooms("c1"), k.user(7)]
        store.script("room_join_user").run(r, user_ks, [GRACE_MS, "lobby"])
        mark = log_mark(r)

        assert await join(conn, "lobby", now) == 1
        assert await join(conn, "lobby", now) == 0
        assert logged(r, since=mark) == [joined("lobby", 7, now, occupied=True)]
        assert r.smembers(room_keys("lobby").room_user("lobby", 7)) == {"c1"}


class TestLeave:
    async def test_last_connection_leaves(self, r: redis.Redis) -> None:
        uk, rk = user_keys(7), room_keys("lobby")
        conn = await connect("c1", 7)
        await join(conn, "lobby")
        await store.set_status(7, "user7", "away")
        mark, before = log_mark(r), store.now_ms()

        assert await leave(conn, "lobby") is True

        assert r.zscore(rk.room("lobby"), "7") is None
        assert r.scard(uk.conn_rooms("c1")) == 0
        assert r.scard(rk.room_user("lobby", 7)) == 0
        # The user is still online: the leave carries their current status.
        assert logged_by_clock(r, mark, before, store.now_ms()) == [
            {
                "k": "leave",
                "r": "lobby",
                "u": "7",
                "n": "user7",
                "s": "away",
                "why": "left",
                "v": "1",
            }
        ]

    async def test_leave_a_room_never_joined(self, r: redis.Redis) -> None:
        conn = await connect("c1", 7)
        await join(conn, "a")
        entries = log_len(r)

        assert await leave(conn, "b") is False
        assert log_len(r) == entries

    async def test_leave_twice(self, r: redis.Redis) -> None:
        conn = await connect("c1", 7)
        await join(conn, "a")
        await leave(conn, "a")
        entries = log_len(r)

        assert await leave(conn, "a") is False
        assert log_len(r) == entries

    async def test_two_tabs_leave_once(self, r: redis.Redis) -> None:
        first, second = await connect("c1", 7), await connect("c2", 7)
        await join(first, "lobby")
        await join(second, "lobby")
        mark = log_mark(r)

        assert await leave(first, "lobby") is False
        assert r.zscore(room_keys("lobby").room("lobby"), "7") is not None
        assert logged(r, since=mark) == []
        assert await leave(second, "lobby") is True
        assert [(e["k"], e["r"], e["u"]) for e in logged(r, since=mark)] == [
            ("leave", "lobby", "7")
        ]

    async def test_rejoin_after_leave_joins_again(self, r: redis.Redis) -> None:
        conn = await connect("c1", 7)
        await join(conn, "lobby")
        await leave(conn, "lobby")
        mark, now = log_mark(r), store.now_ms()

        assert await join(conn, "lobby", now) == 1
        assert logged(r, since=mark) == [joined("lobby", 7, now, occupied=True)]

    async def test_raw_evalsha(self, r: redis.Redis) -> None:
        """KEYS/ARGV/return of both halves exactly as the script headers document them."""
        uk, rk, now = user_keys(7), room_keys("lobby"), store.now_ms()
        conn = await connect("c1", 7)
        await join(conn, "lobby")
        user_sha = r.script_load(store.script("room_leave_user").source)
        room_sha = r.script_load(store.script("room_leave_room").source)
        user_ks = [uk.conn_rooms("c1"), uk.user(7)]
        room_ks = [rk.room("lobby"), rk.room_user("lobby", 7), rk.events]
        room_args = ["c1", 7, "lobby", now, 1_000, "user7", "online"]
        mark = log_mark(r)

        assert r.evalsha(user_sha, 2, *user_ks, "lobby") == [1, "user7", "online"]
        assert r.evalsha(room_sha, 3, *room_ks, *room_args) == 1
        assert r.evalsha(user_sha, 2, *user_ks, "lobby") == [0, "user7", "online"]
        assert r.evalsha(room_sha, 3, *room_ks, *room_args) == 0
        assert logged(r, since=mark) == [
            {
                "k": "leave",
                "t": str(now),
                "r": "lobby",
                "u": "7",
                "n": "user7",
                "s": "online",
                "why": "left",
                "v": "1",
            }
        ]

    async def test_retry_after_the_user_half_alone_leaves_once(self, r: redis.Redis) -> None:
        """A leave whose first attempt died between the halves: the retry finishes it."""
        k = user_keys(7)
        conn = await connect("c1", 7)
        await join(conn, "lobby")
        store.script("room_leave_user").run(r, [k.conn_rooms("c1"), k.user(7)], ["lobby"])
        mark = log_mark(r)

        assert await leave(conn, "lobby") is True
        assert await leave(conn, "lobby") is False
        assert [(e["k"], e["r"], e["u"]) for e in logged(r, since=mark)] == [
            ("leave", "lobby", "7")
        ]
        assert r.zscore(room_keys("lobby").room("lobby"), "7") is None


class TestRepair:
    """repair_rooms.lua through store.repair_rooms: members lapsed for longer than the key
    grace are removed and logged leaving, once; live members and the index stay right."""

    async def test_lapsed_member_is_removed_and_logged_once(self, r: redis.Redis) -> None:
        k, now = room_keys("lobby"), store.now_ms()
        later = now + TTL_MS + GRACE_MS + 5_000  # "old" lapsed a key grace ago by then
        assert await join(await connect("old", 7, now), "lobby", now) == 1
        assert await join(await connect("live", 8, later), "lobby", later) == 1
        mark = log_mark(r)

        assert store.repair_rooms(k.shard, later) == 1
        assert store.repair_rooms(k.shard, later) == 0

        assert r.zrange(k.room("lobby"), 0, -1) == ["8"]
        assert not r.exists(k.room_user("lobby", 7))
        assert r.smembers(k.room_user("lobby", 8)) == {"live"}
        # The index now holds the oldest remaining member's expiry.
        assert r.zscore(k.rooms, "lobby") == r.zscore(k.room("lobby"), "8")
        assert logged(r, since=mark) == [
            {
                "k": "leave",
                "t": str(later),
                "r": "lobby",
                "u": "7",
                "n": "",
                "s": "offline",
                "why": "timeout",
            }
        ]

    async def test_member_lapsed_within_the_key_grace_is_left_to_the_sweep(
        self, r: redis.Redis
    ) -> None:
        now = store.now_ms()
        assert await join(await connect("old", 7, now), "lobby", now) == 1
        mark = log_mark(r)

        k = room_keys("lobby")
        assert store.repair_rooms(k.shard, now + TTL_MS + 1_000) == 0
        assert r.zscore(k.room("lobby"), "7") is not None
        assert logged(r, since=mark) == []

    async def test_last_lapsed_member_vacates_and_leaves_the_index(self, r: redis.Redis) -> None:
        # Two rooms of one shard: its index is read in two batches of one.
        k, now, hall = room_keys("lobby"), store.now_ms(), room_beside("lobby")
        assert await join(await connect("old", 7, now), "lobby", now) == 1
        assert await join(await connect("other", 9, now), hall, now) == 1
        mark = log_mark(r)

        assert store.repair_rooms(k.shard, now + TTL_MS + GRACE_MS + 5_000, batch=1) == 2
        assert r.zcard(k.rooms) == 0
        assert [e.get("v") for e in logged(r, since=mark)] == ["1", "1"]


class TestOccupancy:
    """``o``/``v`` on room joins and leaves: the room's member zset went 0 -> 1 / 1 -> 0
    (what the server-side hooks turn into room.occupied / room.vacated)."""

    async def test_second_member_does_not_occupy_and_first_leaver_does_not_vacate(
        self, r: redis.Redis
    ) -> None:
        a, b = await connect("a", 1), await connect("b", 2)
        mark = log_mark(r)
        await join(a, "lobby")
        await join(b, "lobby")
        await leave(a, "lobby")
        await leave(b, "lobby")

        assert [(e["k"], e["u"], e.get("o"), e.get("v")) for e in logged(r, since=mark)] == [
            ("join", "1", "1", None),
            ("join", "2", None, None),
            ("leave", "1", None, None),
            ("leave", "2", None, "1"),
        ]

    async def test_end_of_the_last_member_vacates_only_its_empty_rooms(
        self, r: redis.Redis
    ) -> None:
        a, b = await connect("a", 1), await connect("b", 2)
        await join(a, "x")
        await join(a, "y")
        await join(b, "y")
        mark = log_mark(r)

        await store.end_connections([store.ConnRef("a", 1, ("x", "y"))])

        rooms = {e["r"]: e.get("v") for e in logged(r, since=mark) if e["k"] == "leave"}
        assert rooms == {"x": "1", "y": None, "": None}

    async def test_a_lapsed_member_keeps_the_room_occupied_until_swept(
        self, r: redis.Redis
    ) -> None:
        now = store.now_ms()
        old = await connect("old", 1, now - TTL_MS - 1_000)
        assert store.room_join_sync(old, "lobby", now=now - TTL_MS) == 1
        mark = log_mark(r)

        assert await join(await connect("b", 2), "lobby", now) == 1

        assert [e.get("o") for e in logged(r, since=mark) if e["k"] == "join"] == [None, None]


class TestRoomListing:
    async def test_lists_room_members_only(self, r: redis.Redis) -> None:
        a, b = await connect("a", 1), await connect("b", 2)
        await connect("c", 3)
        await join(a, "lobby")
        await join(b, "lobby")
        await join(b, "other")

        count, users = store.list_online("lobby")

        assert count == 2
        assert sorted(u["id"] for u in users) == [1, 2]
        assert store.list_online("other")[0] == 1
        assert store.list_online("empty") == (0, [])
        assert store.list_online()[0] == 3


class TestStatus:
    async def test_logs_globally_and_in_every_room_of_every_tab(self, r: redis.Redis) -> None:
        first, second = await connect("c1", 7), await connect("c2", 7)
        await join(first, "b")
        await join(second, "a")
        await join(second, "b")
        mark, before = log_mark(r), store.now_ms()

        rooms = await store.set_status(7, "user7", "busy", rooms=("c",))

        assert rooms == {"a", "b", "c"}
        assert r.hget(user_keys(7).user(7), "status") == "busy"
        status = {"k": "status", "u": "7", "n": "user7", "s": "busy"}
        # The global scope (the user's shard) and each room once (on the room's shard), though
        # two tabs are in "b": the shards' logs compared by scope, not in their merged order.
        by_clock = logged_by_clock(r, mark, before, store.now_ms())
        assert sorted(by_clock, key=lambda e: e["r"]) == [
            {**status, "r": ""},
            {**status, "r": "a"},
            {**status, "r": "b"},
            {**status, "r": "c"},
        ]

    async def test_lapsed_tabs_rooms_are_not_told(self, r: redis.Redis) -> None:
        now = store.now_ms()
        old = await connect("old", 7, now - TTL_MS - 1_000)
        store.room_join_sync(old, "gone", now=now - TTL_MS - 1_000)
        await connect("c1", 7)
        mark = log_mark(r)

        rooms = await store.set_status(7, "user7", "away")

        assert rooms == set()
        assert [(e["k"], e["r"], e["s"]) for e in logged(r, since=mark)] == [("status", "", "away")]

    async def test_raw_evalsha(self, r: redis.Redis) -> None:
        """KEYS/ARGV/return exactly as the script header documents them."""
        k, now = user_keys(7), store.now_ms()  # the user's shard, as the store passes
        sha = r.script_load(store.script("status").source)
        mark = log_mark(r)

        out = r.evalsha(sha, 2, k.user(7), k.events, now, 1_000, 7, "bob", "dnd", 2, "x", "y")

        assert out == 3
        assert r.hget(k.user(7), "status") == "dnd"
        assert logged(r, since=mark) == [
            {"k": "status", "t": str(now), "r": room, "u": "7", "n": "bob", "s": "dnd"}
            for room in ("", "x", "y")
        ]


class TestPublish:
    async def test_logs_one_frame_and_returns_its_id(self, r: redis.Redis) -> None:
        frame = json.dumps({"type": "chat.message", "data": {"text": "hi"}})
        mark, before = log_mark(r), store.now_ms()

        entry_id = await store.publish("lobby", frame)

        ((logged_id, _),) = log_entries(r, since=mark)
        assert entry_id == logged_id
        assert logged_by_clock(r, mark, before, store.now_ms()) == [
            {"k": "frame", "r": "lobby", "f": frame}
        ]
