"""end.lua, run against the private Redis through ``presence.store``.

Covers graceful close ('closed') and sweep ('swept') modes: what gets deleted, the global and
per-room leaves (last live tab only, computed exactly once however connections are ended),
the score of a user who stays online, claims, and the single-owner rule between a closing
socket and a sweep. The event log gets, per connection ended, the global leave, then
``close`` (why, at, hb) -- the user half, end.lua -- then its room leaves (the room half,
end_rooms.lua, on the rooms' shards' streams), each exactly once; an end that ends nothing
logs nothing.
"""

from __future__ import annotations

import redis

from presence import store
from presence.hooks.events import events_of
from tests.support.eventlog import by_home, leave, log_entries, log_mark, logged, logged_by_shard
from tests.support.eventlog import close as closed_entry
from tests.support.homes import end_swept, online_uids, room_keys, user_keys
from tests.support.lua_timing import TTL_MS, _timing  # noqa: F401 - autouse fixture


async def connect(cid: str, uid: int, now: int, rooms: tuple[str, ...] = ()) -> store.ConnRef:
    """A connection of user ``uid`` (named ``user<uid>``) at ``now``, in ``rooms``."""
    await store.connect(cid=cid, uid=uid, username=f"user{uid}", channel="ch", now=now)
    ref = store.ConnRef(cid, uid, rooms)
    for room in rooms:
        store.room_join_sync(ref, room, now=now)
    return ref


async def close(*conns: store.ConnRef, now: int, reason: str = "closed") -> list[store.EndResult]:
    """end.lua in 'closed' mode (the sockets closed) through the store."""
    return await store.end_connections(conns, reason=reason, now=now)


class TestClosed:
    async def test_last_connection_leaves_and_is_deleted(self, r: redis.Redis) -> None:
        k, t0 = user_keys(7), store.now_ms()
        conn = await connect("c1", 7, t0, rooms=("a", "b"))
        mark = log_mark(r)

        (res,) = await close(conn, now=t0 + 1)

        assert res == store.EndResult(cid="c1", state=1, global_left=True, rooms_left=["a", "b"])
        assert not r.exists(k.conn_rooms("c1"))
        # The hash is replaced by a tombstone: heartbeat.lua tells "ended" from "lost" by it.
        assert r.hgetall(k.conn("c1")) == {"ended": str(t0 + 1)}
        assert 0 < r.pttl(k.conn("c1")) <= 10 * store.clients.ttl_ms()
        assert r.zscore(k.conns, "c1") is None
        assert r.zscore(k.users, "7") is None
        assert r.zcard(k.user_conns(7)) == 0
        ka, kb = room_keys("a"), room_keys("b")
        assert r.zcard(ka.room("a")) == r.zcard(kb.room("b")) == 0
        assert r.scard(ka.room_user("a", 7)) == 0
        assert r.hget(k.stats, "disconnects") == "1"
        # The user half (the global leave, the connection's close: ended now, its last
        # heartbeat was the connect at t0) on the user's shard, the room half on the rooms'.
        assert logged_by_shard(r, since=mark) == by_home(
            [
                leave("", 7, t0 + 1, "closed", at=t0 + 1),
                closed_entry("c1", 7, t0 + 1, "closed", at=t0 + 1, hb=t0),
                leave("a", 7, t0 + 1, "closed", vacated=True),
                leave("b", 7, t0 + 1, "closed", vacated=True),
            ]
        )

    async def test_logs_the_reason_given(self, r: redis.Redis) -> None:
        t0 = store.now_ms()
        conn = await connect("c1", 7, t0, rooms=("a",))
        mark = log_mark(r)

        await close(conn, now=t0 + 1, reason="kicked")

        assert logged_by_shard(r, since=mark) == by_home(
            [
                leave("", 7, t0 + 1, "kicked", at=t0 + 1),
                closed_entry("c1", 7, t0 + 1, "kicked", at=t0 + 1, hb=t0),
                leave("a", 7, t0 + 1, "kicked", vacated=True),
            ]
        )

    async def test_last_heartbeat_is_logged_not_the_connect(self, r: redis.Redis) -> None:
        t0 = store.now_ms()
        conn = await connect("c1", 7, t0)
        await store.heartbeat_many([conn], now=t0 + 25_000)
        mark = log_mark(r)

        await close(conn, now=t0 + 30_000)

        assert logged_by_shard(r, since=mark)[store.user_home(7)][-1] == closed_entry(
            "c1", 7, t0 + 30_000, "closed", at=t0 + 30_000, hb=t0 + 25_000
        )

    async def test_second_end_is_a_noop(self, r: redis.Redis) -> None:
        k, t0 = user_keys(7), store.now_ms()
        conn = await connect("c1", 7, t0, rooms=("a",))
        await close(conn, now=t0 + 1)
        mark = log_mark(r)

        (res,) = await close(conn, now=t0 + 2)

        assert res == store.EndResult(cid="c1", state=0, global_left=False, rooms_left=[])
        assert r.hget(k.stats, "disconnects") == "1"
        # No leave (nothing left), but the socket's own close, so its row ends whoever ended
        # the connection first; the row keeps the first ending.
        (entry,) = logged(r, since=mark)
        assert (entry["k"], entry["c"], entry["why"], entry["at"], entry["hb"]) == (
            "close",
            "c1",
            "closed",
            str(t0 + 2),
            "",
        )

    async def test_closing_one_of_two_tabs_does_not_leave(self, r: redis.Redis) -> None:
        k, t0 = user_keys(7), store.now_ms()
        first = await connect("c1", 7, t0 + 5_000, rooms=("a",))
        second = await connect("c2", 7, t0, rooms=("a",))
        mark = log_mark(r)

        (res,) = await close(first, now=t0 + 6_000)

        assert (res.state, res.global_left, res.rooms_left) == (1, False, [])
        # Still online, scored by the remaining tab (lowered from the closed one's expiry).
        assert r.zscore(k.users, "7") == t0 + TTL_MS
        assert r.smembers(room_keys("a").room_user("a", 7)) == {"c2"}
        assert r.zscore(room_keys("a").room("a"), "7") is not None
        # Only the connection is logged as closed: the user left nothing.
        assert logged(r, since=mark) == [
            closed_entry("c1", 7, t0 + 6_000, "closed", at=t0 + 6_000, hb=t0 + 5_000)
        ]
        mark = log_mark(r)

        (res,) = await close(second, now=t0 + 7_000)
        assert (res.state, res.global_left, res.rooms_left) == (1, True, ["a"])
        assert logged_by_shard(r, since=mark) == by_home(
            [
                leave("", 7, t0 + 7_000, "closed", at=t0 + 7_000),
                closed_entry("c2", 7, t0 + 7_000, "closed", at=t0 + 7_000, hb=t0),
                leave("a", 7, t0 + 7_000, "closed", vacated=True),
            ]
        )

    async def test_leaves_only_rooms_no_other_tab_is_in(self, r: redis.Redis) -> None:
        t0 = store.now_ms()
        first = await connect("c1", 7, t0, rooms=("a", "b", "c"))
        await connect("c2", 7, t0, rooms=("b",))
        mark = log_mark(r)

        (res,) = await close(first, now=t0 + 1)

        assert res.global_left is False
        assert sorted(res.rooms_left) == ["a", "c"]
        assert logged_by_shard(r, since=mark) == by_home(
            [
                closed_entry("c1", 7, t0 + 1, "closed", at=t0 + 1, hb=t0),
                leave("a", 7, t0 + 1, "closed", vacated=True),
                leave("c", 7, t0 + 1, "closed", vacated=True),
            ]
        )

    async def test_other_users_are_untouched(self, r: redis.Redis) -> None:
        t0 = store.now_ms()
        mine = await connect("c1", 1, t0, rooms=("a",))
        await connect("c2", 2, t0, rooms=("a",))
        mark = log_mark(r)

        (res,) = await close(mine, now=t0 + 1)

        assert res.rooms_left == ["a"]
        assert r.zrange(room_keys("a").room("a"), 0, -1) == ["2"]
        assert online_uids(r) == {"2"}
        assert {e["u"] for e in logged(r, since=mark)} == {"1"}

    async def test_closing_removes_a_sweep_claim(self, r: redis.Redis) -> None:
        k, t0 = user_keys(7), store.now_ms()
        conn = await connect("c1", 7, t0)
        r.zadd(k.sweeping, {"c1": t0 + 30_000})
        r.hset(k.sweeping_exp, "c1", t0)

        mark = log_mark(r)

        (res,) = await close(conn, now=t0 + 1)

        assert res.state == 1
        assert r.zscore(k.sweeping, "c1") is None
        assert r.hget(k.sweeping_exp, "c1") is None
        # A socket that closes ends now, whatever a sweep's claim says.
        assert logged_by_shard(r, since=mark)[k.shard][-1] == closed_entry(
            "c1", 7, t0 + 1, "closed", at=t0 + 1, hb=t0
        )


class TestLeaveComputedOnce:
    async def test_lapsed_tabs_ended_one_by_one(self, r: redis.Redis) -> None:
        t0 = store.now_ms()
        old = t0 - TTL_MS - 1_000
        a = await connect("c1", 7, old, rooms=("x",))
        b = await connect("c2", 7, old, rooms=("x",))
        mark = log_mark(r)

        (first,) = end_swept([a], now=t0)
        (second,) = end_swept([b], now=t0)

        assert (first.state, first.global_left) == (1, True)
        assert (second.state, second.global_left, second.rooms_left) == (1, False, ["x"])
        assert first.rooms_left == []  # c2 was still in the room's member set
        # Not claimed through claim_expired (no claim-time expiry): they end at their expiry.
        assert logged_by_shard(r, since=mark) == by_home(
            [
                leave("", 7, t0, "timeout", at=old + TTL_MS),  # it lapsed then; logged now (t0)
                closed_entry("c1", 7, t0, "timeout", at=old + TTL_MS, hb=old),
                closed_entry("c2", 7, t0, "timeout", at=old + TTL_MS, hb=old),
                leave("x", 7, t0, "timeout", vacated=True),
            ]
        )

    async def test_lapsed_tabs_ended_in_one_batch(self, r: redis.Redis) -> None:
        t0 = store.now_ms()
        old = t0 - TTL_MS - 1_000
        a = await connect("c1", 7, old, rooms=("x",))
        b = await connect("c2", 7, old, rooms=("x",))

        mark = log_mark(r)

        results = end_swept([a, b], now=t0)

        assert [res.state for res in results] == [1, 1]
        assert sum(res.global_left for res in results) == 1
        assert sum(res.rooms_left.count("x") for res in results) == 1
        assert r.hget(user_keys(7).stats, "disconnects") == "2"
        assert sorted((e["k"], e.get("r"), e.get("c")) for e in logged(r, since=mark)) == [
            ("close", None, "c1"),
            ("close", None, "c2"),
            ("leave", "", None),
            ("leave", "x", None),
        ]

    async def test_closing_the_live_tab_leaves_when_the_other_lapsed(self, r: redis.Redis) -> None:
        t0 = store.now_ms()
        lapsed = await connect("c1", 7, t0 - TTL_MS - 1_000)
        live = await connect("c2", 7, t0)
        mark = log_mark(r)

        (res,) = await close(live, now=t0 + 1)
        middle = log_mark(r)
        (later,) = end_swept([lapsed], now=t0 + 2)

        assert res.global_left is True
        assert (later.state, later.global_left) == (1, False)
        assert [e["k"] for e in logged(r, since=mark)] == ["leave", "close", "close"]
        assert logged(r, since=middle) == [
            closed_entry("c1", 7, t0 + 2, "timeout", at=t0 - 1_000, hb=t0 - TTL_MS - 1_000)
        ]

    async def test_close_and_sweep_race_has_one_owner(self, r: redis.Redis) -> None:
        t0 = store.now_ms()
        conn = await connect("c1", 7, t0 - TTL_MS - 1_000)
        mark = log_mark(r)

        (swept,) = end_swept([conn], now=t0)
        (closed,) = await close(conn, now=t0 + 1)

        assert swept.state == 1
        assert closed.state == 0
        assert closed.global_left is False
        # The leave by its one owner only; the socket's late close is logged too (its row
        # keeps the sweep's ending, the first).
        assert [(e["k"], e["why"]) for e in logged(r, since=mark)] == [
            ("leave", "timeout"),
            ("close", "timeout"),
            ("close", "closed"),
        ]


class TestSwept:
    async def test_live_unclaimed_connection_is_not_ended(self, r: redis.Redis) -> None:
        k, t0 = user_keys(7), store.now_ms()
        conn = await connect("c1", 7, t0)
        mark = log_mark(r)

        (res,) = end_swept([conn], now=t0 + 1)

        assert res.state == -1
        assert r.exists(k.conn("c1"))
        assert r.hget(k.stats, "disconnects") is None
        assert logged(r, since=mark) == []

    async def test_claimed_connection_is_ended(self, r: redis.Redis) -> None:
        k, t0 = user_keys(7), store.now_ms()
        old = t0 - TTL_MS - 1_000
        conn = await connect("c1", 7, old, rooms=("x",))
        r.zrem(k.conns, "c1")
        r.zadd(k.sweeping, {"c1": t0 + 30_000})
        mark = log_mark(r)

        (res,) = end_swept([conn], now=t0)

        assert res == store.EndResult(cid="c1", state=1, global_left=True, rooms_left=["x"])
        assert r.hgetall(k.conn("c1")).keys() == {"ended"}
        assert logged_by_shard(r, since=mark) == by_home(
            [
                leave("", 7, t0, "timeout", at=old + TTL_MS),
                closed_entry("c1", 7, t0, "timeout", at=old + TTL_MS, hb=old),
                leave("x", 7, t0, "timeout", vacated=True),
            ]
        )

    async def test_the_offline_hook_of_a_swept_user_is_dated_at_the_lapse(
        self, r: redis.Redis
    ) -> None:
        # docs/hooks.md: at_ms is when it happened, for an expiry the last heartbeat + TTL, not
        # when the sweep noticed (a late sweep under load once dated it 0.73 s later).
        k, t0 = user_keys(7), store.now_ms()
        old = t0 - TTL_MS - 1_000
        conn = await connect("c1", 7, old)
        r.zrem(k.conns, "c1")
        r.zadd(k.sweeping, {"c1": t0 + 30_000})
        mark = log_mark(r)

        end_swept([conn], now=t0)

        entries = [store.GroupEntry(eid, fields) for eid, fields in log_entries(r, since=mark)]
        offline = [event for entry in entries for event in events_of(entry)]
        assert [(event.type, event.at_ms) for event in offline] == [("user.offline", old + TTL_MS)]

    async def test_swept_connection_ends_at_its_expiry_at_claim_time(self, r: redis.Redis) -> None:
        k, t0 = user_keys(7), store.now_ms()
        old = t0 - TTL_MS - 1_000
        conn = await connect("c1", 7, old)
        r.zrem(k.conns, "c1")
        r.zadd(k.sweeping, {"c1": t0 + 30_000})
        r.hset(k.sweeping_exp, "c1", old + TTL_MS - 500)  # what claim_expired.lua recorded
        mark = log_mark(r)

        end_swept([conn], now=t0)

        assert logged_by_shard(r, since=mark)[k.shard][-1] == closed_entry(
            "c1", 7, t0, "timeout", at=old + TTL_MS - 500, hb=old
        )

    async def test_raw_evalsha_result_shape(self, r: redis.Redis) -> None:
        """KEYS/ARGV/return exactly as the script header documents them."""
        # Each half with its own shard's keys: the user's, then the room's.
        k, ka, t0 = user_keys(7), room_keys("a"), store.now_ms()
        await connect("c1", 7, t0, rooms=("a",))
        mark = log_mark(r)
        sha = r.script_load(store.script("end").source)
        ks = [*k.fixed(), k.events, k.held, k.held_why, *k.conn_group("c1", 7, [])]
        args = [t0 + 1, "closed", "error", TTL_MS, 1_000, 0, 1, "c1", 7]

        out = r.evalsha(sha, len(ks), *ks, *args)

        # The user half only: the connection's own rooms come back for the room half.
        assert out == [["c1", 1, 1, "user7", "a"]]
        assert logged(r, since=mark) == [
            leave("", 7, t0 + 1, "error", at=t0 + 1),
            closed_entry("c1", 7, t0 + 1, "error", at=t0 + 1, hb=t0),
        ]
        assert r.evalsha(sha, len(ks), *ks, *args) == [["c1", 0, 0, ""]]
        # The room half (end_rooms.lua), idempotent by connection id.
        sha = r.script_load(store.script("end_rooms").source)
        ks = [ka.events, ka.held, ka.held_why, ka.room("a"), ka.room_user("a", 7)]
        args = [t0 + 1, "error", 1_000, 0, 1, "c1", 7, "a", "user7"]
        room_mark = log_mark(r)
        assert r.evalsha(sha, len(ks), *ks, *args) == [1]
        assert r.evalsha(sha, len(ks), *ks, *args) == [0]
        assert logged_by_shard(r, since=room_mark) == {
            ka.shard: [leave("a", 7, t0 + 1, "error", vacated=True)]
        }
