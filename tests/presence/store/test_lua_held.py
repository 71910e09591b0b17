"""The grace window in the scripts: end.lua holds, connect.lua takes back, room_join_*.lua
finds the member still there, release_held.lua logs what is due -- each leave exactly once.

Real scripts against the private Redis, with explicit times (no sleeping): a close at t0+1
with PRESENCE_LEAVE_GRACE = 5 s is due at t0+5001.
"""

from __future__ import annotations

import pytest
import redis
from pytest_django.fixtures import Settings

from presence import store
from tests.support.eventlog import by_home, leave, log_mark, logged, logged_by_shard
from tests.support.eventlog import close as closed_entry
from tests.support.homes import end_swept, room_keys, user_keys
from tests.support.lua_timing import _timing  # noqa: F401 - autouse fixture

GRACE_MS = 5_000


@pytest.fixture(autouse=True)
def _grace(settings: Settings) -> None:
    settings.PRESENCE_LEAVE_GRACE = GRACE_MS / 1000


async def connect(cid: str, uid: int, now: int, rooms: tuple[str, ...] = ()) -> store.ConnRef:
    result = await store.connect(cid=cid, uid=uid, username=f"user{uid}", channel="ch", now=now)
    assert not result.refused
    ref = store.ConnRef(cid, uid, rooms)
    for room in rooms:
        store.room_join_sync(ref, room, now=now)
    return ref


async def close(conn: store.ConnRef, now: int, reason: str = "closed") -> store.EndResult:
    (result,) = await store.end_connections([conn], reason=reason, now=now)
    return result


def release_due(now: int) -> tuple[int, int]:
    """release_due on every shard, as the sweeps of every shard run it (a user's hold is on
    the user's shard, a room's on the room's): (found due, released), summed."""
    runs = [store.release_due(now=now, shard=shard) for shard in store.all_shards()]
    return sum(found for found, _ in runs), sum(released for _, released in runs)


def kinds(entries: list[dict[str, str]]) -> list[tuple[str, str]]:
    """(kind, room) of the presence entries (open/close left out)."""
    return [(e["k"], e.get("r", "")) for e in entries if e["k"] in ("join", "leave")]


class TestHold:
    async def test_a_close_holds_the_leaves_and_the_user_stays_listed(self, r: redis.Redis) -> None:
        k, ka, t0 = user_keys(7), room_keys("a"), store.now_ms()
        conn = await connect("c1", 7, t0, rooms=("a",))
        mark = log_mark(r)

        result = await close(conn, now=t0 + 1)

        assert (result.state, result.held, result.global_left, result.rooms_left) == (
            1,
            True,
            False,
            [],
        )
        # Only the connection's own close is logged: no leave yet.
        assert logged(r, since=mark) == [closed_entry("c1", 7, t0 + 1, "closed", at=t0 + 1, hb=t0)]
        due = t0 + 1 + GRACE_MS
        assert r.zscore(k.held, "7") == due
        assert r.zscore(ka.held, "7|a") == due  # the room's hold on the room's shard
        assert r.zscore(k.users, "7") == due
        assert r.zscore(ka.room("a"), "7") == due
        # Listed as present (no live connection) until the leave is released.
        count, users = store.list_online()
        assert (count, [u["id"] for u in users]) == (1, [7])
        assert store.list_online("a")[0] == 1
        assert store.user_presence(7) == ("online", 0)

    async def test_a_reconnect_within_the_window_logs_no_leave_and_no_join(
        self, r: redis.Redis
    ) -> None:
        k, t0 = user_keys(7), store.now_ms()
        first = await connect("c1", 7, t0, rooms=("a", "b"))
        await store.set_status(7, "user7", "busy")
        await close(first, now=t0 + 1)
        mark = log_mark(r)

        again = await connect("c2", 7, t0 + 2_000, rooms=("a",))  # b is not rejoined
        found, released = release_due(now=t0 + 1 + GRACE_MS)

        entries = logged(r, since=mark)
        # Nobody saw the user leave, so nobody sees them join; b, not rejoined, is left.
        assert kinds(entries) == [("leave", "b")]
        assert (found, released) == (2, 1)  # the rooms' holds; the user's was taken back
        assert r.zscore(k.held, "7") is None
        assert sum(r.zcard(room_keys(room).held) for room in ("a", "b")) == 0
        assert r.hget(k.user(7), "status") == "busy"  # kept across the reload
        assert store.user_presence(7) == ("busy", 1)
        # The kept connection leaves at once on a final close.
        result = await close(again, now=t0 + 9_000, reason="kicked")
        assert (result.global_left, result.rooms_left) == (True, ["a"])

    async def test_no_reconnect_leaves_once_when_due(self, r: redis.Redis) -> None:
        k, t0 = user_keys(7), store.now_ms()
        await close(await connect("c1", 7, t0, rooms=("a",)), now=t0 + 1)
        mark = log_mark(r)

        early = release_due(now=t0 + GRACE_MS)  # not due yet
        first = release_due(now=t0 + 1 + GRACE_MS)
        second = release_due(now=t0 + 2 * GRACE_MS)

        assert early == (0, 0)
        assert first == (2, 2)
        assert second == (0, 0)
        assert logged_by_shard(r, since=mark) == by_home(
            [
                leave("a", 7, t0 + 1 + GRACE_MS, "closed", vacated=True),
                leave("", 7, t0 + 1 + GRACE_MS, "closed"),
            ]
        )
        assert r.zscore(k.users, "7") is None
        assert store.list_online() == (0, [])

    async def test_the_leave_carries_the_close_reason(self, r: redis.Redis) -> None:
        t0 = store.now_ms()
        await close(await connect("c1", 7, t0), now=t0 + 1, reason="server_shutdown")
        mark = log_mark(r)

        release_due(now=t0 + 1 + GRACE_MS)

        assert [e["why"] for e in logged(r, since=mark)] == ["server_shutdown"]

    async def test_another_tab_keeps_the_user_and_only_the_room_is_held(
        self, r: redis.Redis
    ) -> None:
        t0 = store.now_ms()
        await connect("c2", 7, t0)
        result = await close(await connect("c1", 7, t0, rooms=("a",)), now=t0 + 1)
        mark = log_mark(r)

        release_due(now=t0 + 1 + GRACE_MS)

        assert result.held
        assert kinds(logged(r, since=mark)) == [("leave", "a")]
        assert store.user_presence(7) == ("online", 1)


class TestAtOnce:
    @pytest.mark.parametrize("reason", ["kicked", "logged_out", "revoked"])
    async def test_final_reasons_leave_at_once(self, r: redis.Redis, reason: str) -> None:
        t0 = store.now_ms()
        conn = await connect("c1", 7, t0, rooms=("a",))
        mark = log_mark(r)

        result = await close(conn, now=t0 + 1, reason=reason)

        assert (result.held, result.global_left, result.rooms_left) == (False, True, ["a"])
        assert sorted(kinds(logged(r, since=mark))) == [("leave", ""), ("leave", "a")]
        assert r.zcard(user_keys(7).held) == r.zcard(room_keys("a").held) == 0

    async def test_grace_zero_is_off(self, r: redis.Redis, settings: Settings) -> None:
        settings.PRESENCE_LEAVE_GRACE = 0
        t0 = store.now_ms()

        result = await close(await connect("c1", 7, t0), now=t0 + 1)

        assert (result.held, result.global_left) == (False, True)

    async def test_a_swept_connection_is_not_held_and_a_hold_never_doubles_it(
        self, r: redis.Redis
    ) -> None:
        k, t0 = user_keys(7), store.now_ms()
        lapsed = await connect("c2", 7, t0)  # a tab that vanished: it will lapse
        r.zadd(k.conns, {"c2": t0 + 10})
        r.zadd(k.user_conns(7), {"c2": t0 + 10})
        await close(await connect("c1", 7, t0), now=t0 + 20)  # no live tab left: held
        mark = log_mark(r)

        batch = store.claim_expired(
            r, batch=10, claim_timeout_ms=30_000, now=t0 + 30, shard=k.shard
        )
        ended = end_swept([lapsed], now=t0 + 30)
        released = release_due(now=t0 + 20 + GRACE_MS)

        assert [c.cid for c in batch.claims] == ["c2"]
        assert ended[0].global_left  # its leave is logged by the sweep, not delayed
        assert released == (0, 0)  # the sweep's leave dropped the hold
        assert kinds(logged(r, since=mark)) == [("leave", "")]
        assert r.hget(k.user(7), "held") is None

    async def test_release_user_logs_the_held_leaves_now(self, r: redis.Redis) -> None:
        t0 = store.now_ms()
        await close(await connect("c1", 7, t0, rooms=("a",)), now=t0 + 1)
        await close(await connect("c9", 9, t0), now=t0 + 1)
        mark = log_mark(r)

        assert store.release_user(7, now=t0 + 2) == 2

        assert sorted(kinds(logged(r, since=mark))) == [("leave", ""), ("leave", "a")]
        assert r.zscore(user_keys(9).held, "9") is not None  # other users' holds stay


class TestProcessRelease:
    """arelease_due: the closing process's timer, after a mass disconnect."""

    async def test_one_call_releases_every_due_leave_of_every_shard(self, r: redis.Redis) -> None:
        # More users on one shard than one script call takes, and some on two others.
        crowded = store.user_home(1)
        uids = [u for u in range(1, 200_000) if store.user_home(u) == crowded]
        uids = uids[: store.RELEASE_BATCH + 30]
        others = [u for u in range(1, 500) if store.user_home(u) != crowded][:20]
        t0 = store.now_ms()
        refs = [await connect(f"c{u}", u, t0) for u in uids + others]
        mark = log_mark(r)
        ended = await store.end_connections(refs, now=t0 + 1)
        assert all(e.held for e in ended)

        due = t0 + 1 + GRACE_MS
        shards = {store.user_home(u) for u in uids + others}
        assert len(shards) > 2
        assert await store.arelease_due(now=due - 1, shards=shards) == (0, 0)  # not due yet
        assert await store.arelease_due(now=due, shards=shards) == (len(refs), len(refs))

        left = [e for e in logged(r, mark) if e["k"] == "leave"]
        assert sorted(int(e["u"]) for e in left) == sorted(uids + others)
        assert release_due(due) == (0, 0)  # nothing left to the sweep
