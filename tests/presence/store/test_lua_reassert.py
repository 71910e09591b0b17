"""reassert.lua: a live connection the store lost is written back, with no join/leave noise.

The loss is made the way a failover or a restart without data makes it: the keys vanish.
The script restores connection, user, status and rooms, logs joins marked ``x`` = 1 only for
scopes the user was missing from (the hooks send nothing for those), never a leave, and
refuses to bring back a connection that was ended here (end.lua's tombstone).
"""

from __future__ import annotations

import redis

from presence import store
from presence.hooks.events import events_of
from tests.support.eventlog import Entry, join, log_entries, log_mark, logged
from tests.support.homes import room_keys, user_keys
from tests.support.lua_timing import GRACE_MS, TTL_MS, _timing  # noqa: F401 - autouse fixture


def live(cid: str, uid: int, *rooms: str, status: str = "online") -> store.Liveness:
    return store.Liveness(
        conn=store.ConnRef(cid, uid, tuple(sorted(rooms))),
        username=f"user{uid}",
        channel=f"ch-{cid}",
        status=status,
        ip="10.0.0.1",
        login="L",
    )


async def register(cid: str, uid: int, now: int, *rooms: str) -> None:
    await store.connect(
        cid=cid,
        uid=uid,
        username=f"user{uid}",
        channel=f"ch-{cid}",
        now=now,
    )
    for room in rooms:
        await store.room_join(store.ConnRef(cid, uid), room, now=now)


async def reassert(conn: store.Liveness, now: int) -> tuple[int, int]:
    return await store.reassert(conn, now=now)


def by_scope(entries: list[Entry]) -> list[Entry]:
    """Entries ordered by scope ("" global first, then rooms by name): the global join is
    logged on the user's shard, each room's on the room's, so their merged order says
    nothing."""
    return sorted(entries, key=lambda e: e["r"])


class TestLost:
    async def test_everything_is_written_back(self, r: redis.Redis) -> None:
        k, t0 = user_keys(7), store.now_ms()
        mark = log_mark(r)

        assert await reassert(live("c1", 7, "lobby", "b", status="busy"), t0) == (1, 3)

        exp = t0 + TTL_MS
        assert r.zscore(k.conns, "c1") == exp
        assert r.zscore(k.users, "7") == exp
        assert r.zscore(k.user_conns(7), "c1") == exp
        for room in ("lobby", "b"):
            assert r.zscore(room_keys(room).room(room), "7") == exp, room
            assert r.smembers(room_keys(room).room_user(room, 7)) == {"c1"}, room
        assert r.smembers(k.conn_rooms("c1")) == {"lobby", "b"}
        conn = r.hgetall(k.conn("c1"))
        assert {f: conn[f] for f in ("uid", "username", "channel", "ip", "login")} == {
            "uid": "7",
            "username": "user7",
            "channel": "ch-c1",
            "ip": "10.0.0.1",
            "login": "L",
        }
        assert r.hget(k.user(7), "status") == "busy"
        assert 0 < r.pttl(k.conn("c1")) <= TTL_MS + GRACE_MS
        assert r.hget(k.stats, "reasserted") == "1"
        # Joins so readers list the user again, marked x = 1: no hook sends user.online.
        assert by_scope(logged(r, since=mark)) == [
            join("", 7, t0, "busy", relisted=True),
            join("b", 7, t0, "busy", relisted=True),
            join("lobby", 7, t0, "busy", relisted=True),
        ]

    async def test_the_hooks_see_no_arrival(self, r: redis.Redis) -> None:
        mark = log_mark(r)
        await reassert(live("c1", 7, "lobby"), store.now_ms())

        entries = [store.GroupEntry(eid, fields) for eid, fields in log_entries(r, since=mark)]
        assert len(entries) == 2
        assert [events_of(e) for e in entries] == [[], []]

    async def test_a_status_kept_by_the_store_wins(self, r: redis.Redis) -> None:
        k, t0 = user_keys(7), store.now_ms()
        r.hset(k.user(7), "status", "away")  # another tab's status survived the loss

        await reassert(live("c1", 7), t0)

        assert r.hget(k.user(7), "status") == "away"

    async def test_partly_lost_only_logs_what_is_missing(self, r: redis.Redis) -> None:
        k, t0 = user_keys(7), store.now_ms()
        await register("c0", 7, t0, "lobby")  # the user's other tab survived
        mark = log_mark(r)

        assert await reassert(live("c1", 7, "lobby", "b"), t0 + 1) == (1, 1)

        assert logged(r, since=mark) == [join("b", 7, t0 + 1, relisted=True)]
        assert r.zcard(k.user_conns(7)) == 2


class TestNotLost:
    async def test_a_known_connection_is_topped_up_silently(self, r: redis.Redis) -> None:
        k, t0 = user_keys(7), store.now_ms()
        await register("c1", 7, t0, "lobby")
        r.srem(k.conn_rooms("c1"), "lobby")  # a join the failover took with it
        mark = log_mark(r)

        assert await reassert(live("c1", 7, "lobby"), t0 + 5) == (2, 0)

        assert logged(r, since=mark) == []
        assert r.smembers(k.conn_rooms("c1")) == {"lobby"}
        assert r.hget(k.stats, "reasserted") is None

    async def test_an_ended_connection_is_not_brought_back(self, r: redis.Redis) -> None:
        k, t0 = user_keys(7), store.now_ms()
        await register("c1", 7, t0, "lobby")
        await store.end_connections([store.ConnRef("c1", 7, ("lobby",))])
        mark = log_mark(r)

        assert await reassert(live("c1", 7, "lobby"), t0 + 5) == (0, 0)

        assert logged(r, since=mark) == []
        assert r.zscore(k.conns, "c1") is None
        assert r.zscore(k.users, "7") is None
        assert r.zcard(room_keys("lobby").room("lobby")) == 0
        assert r.hgetall(k.conn("c1")).keys() == {"ended"}
