"""The presence event logs (each shard's ``{S}:events``) as every script writes them
(presence/lua/lib/eventlog.lua).

Covers the chain of entries (each ``p`` is the id of the entry before it in the same shard's
stream, across scripts and within one script), trimming each stream to
``PRESENCE_EVENT_LOG_MAXLEN``, and atomicity: a script that fails leaves neither state nor
event, and a caller that dies right after sending leaves both.
"""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from pytest_django.fixtures import Settings

from config.embedded_redis import RedisServer
from presence import store
from tests.support.eventlog import (
    Entry,
    Mark,
    by_home,
    log_entries,
    log_len,
    log_mark,
    logged,
    logged_by_shard,
    shard_entries,
)
from tests.support.homes import end_swept, every_shard, room_keys, user_keys
from tests.support.lua_timing import GRACE_MS, TTL_MS, _timing  # noqa: F401 - autouse fixture

State = dict[str, tuple[bytes | None, int]]  # key -> (DUMP, PTTL)


async def connect(
    cid: str, uid: int, now: int | None = None, rooms: tuple[str, ...] = ()
) -> store.ConnRef:
    """A connection of user ``uid`` (named ``user<uid>``) through the store, in ``rooms``."""
    await store.connect(cid=cid, uid=uid, username=f"user{uid}", channel="ch", now=now)
    ref = store.ConnRef(cid, uid, rooms)
    for room in rooms:
        await store.room_join(ref, room, now=now)
    return ref


def connect_command(sha: str, cid: str, uid: int, now: int) -> list[Any]:
    """EVALSHA of connect.lua with KEYS/ARGV exactly as its header documents them (the
    user's shard's keys, as the store passes them)."""
    k = user_keys(uid)
    ks = [k.conns, k.users, k.stats, k.conn(cid), k.conn_rooms(cid), k.user(uid)]
    ks += [k.user_conns(uid), k.events]
    ks += [k.user_block(uid)]
    ks += [k.user_revoked(uid), k.login_revoked(""), k.token_used(""), k.active]
    ks += [k.held, k.held_why]
    args = [now, TTL_MS, GRACE_MS, cid, uid, f"user{uid}", "ch", 1_000, "192.0.2.1", "UA"]
    args += [0, 0, "", 0, "", "register"]
    return ["EVALSHA", sha, len(ks), *ks, *args]


def end_command(sha: str, conn: store.ConnRef, now: int, reason: str) -> list[Any]:
    """EVALSHA of end.lua ('closed' mode) with KEYS/ARGV exactly as its header documents (the
    user half: the user's shard's keys)."""
    k = user_keys(conn.uid)
    ks = [*k.fixed(), k.events, k.held, k.held_why]
    ks += k.conn_group(conn.cid, conn.uid, [])
    args = [now, "closed", reason, TTL_MS, 1_000, 0, 1, conn.cid, conn.uid]
    return ["EVALSHA", sha, len(ks), *ks, *args]


@pytest.fixture
def rb(redis_server: RedisServer) -> redis.Redis:
    """A client on the test Redis that returns bytes (for DUMP)."""
    return redis.Redis.from_url(redis_server.url)


def state(rb: redis.Redis) -> State:
    """Every key but the event logs: its serialized value (DUMP) and time to live (ms)."""
    events = {k.events.encode() for k in every_shard()}
    out: State = {}
    for key in sorted(rb.keys("*")):  # type: ignore[union-attr]
        if key not in events:
            out[key.decode()] = (rb.dump(key), int(rb.pttl(key)))  # type: ignore[arg-type]
    return out


def assert_unchanged(before: State, after: State) -> None:
    """Same keys with the same values, and no expiry set again: a time to live only ran
    down (a script would have set it from a later "now", so higher)."""
    assert after.keys() == before.keys()
    for key, (value, ttl) in before.items():
        assert after[key][0] == value, key
        if ttl < 0:
            assert after[key][1] == ttl, key
        else:
            assert ttl - 2_000 <= after[key][1] <= ttl, key


def break_log(r: redis.Redis, shard: int) -> None:
    """Replace ``shard``'s event log with a plain string: the next append fails (WRONGTYPE)."""
    r.delete(store.keys(shard).events)
    r.set(store.keys(shard).events, "x")


def retype(r: redis.Redis, key: str) -> None:
    """Replace ``key`` with a plain string, so a script reading it fails (WRONGTYPE)."""
    r.delete(key)
    r.set(key, "x")


def resp(*parts: Any) -> bytes:
    """A command in the Redis protocol (RESP2 array of bulk strings)."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        data = part if isinstance(part, bytes) else str(part).encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def send_and_vanish(server: RedisServer, command: list[Any]) -> None:
    """Send ``command`` on a fresh socket and close it at once, reading no reply: a caller
    killed right after sending."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as sock:
        sock.sendall(resp(*command))


def wait_for(check: Callable[[], bool], within: float = 2.0) -> None:
    """Poll ``check`` until it holds; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not true after {within} s")
        time.sleep(0.01)


def assert_chained(entries: list[tuple[str, dict[str, str]]], first_p: str = "0-0") -> None:
    """Each entry's ``p`` is the id of the entry before it; the first one's is ``first_p``."""
    assert entries
    previous = first_p
    for entry_id, fields in entries:
        assert fields["p"] == previous, (entry_id, fields)
        previous = entry_id


def assert_every_stream_chained(r: redis.Redis) -> int:
    """Every shard's stream is one chain from "0-0" (a chain never crosses streams); returns
    how many entries the streams hold together."""
    total = 0
    for shard in store.all_shards():
        entries = shard_entries(r, shard)
        if entries:
            assert_chained(entries)
            total += len(entries)
    return total


def shapes(r: redis.Redis, since: Mark | None, *names: str) -> dict[int, list[Entry]]:
    """Each shard's entries after ``since``, in order, cut down to the fields ``names``."""
    return {
        shard: [{n: e[n] for n in names if n in e} for e in entries]
        for shard, entries in logged_by_shard(r, since).items()
    }


def shape(kind: str, uid: int | None = None, room: str | None = None, **more: str) -> Entry:
    """An expected entry cut down to kind, user, room (and ``more``), for :func:`shapes`."""
    entry = {"k": kind, **more}
    if uid is not None:
        entry["u"] = str(uid)
    if room is not None:
        entry["r"] = room
    return entry


# --------------------------------------------------------------------------- the chain
class TestChain:
    async def test_first_entry_of_an_empty_log_points_at_zero(self, r: redis.Redis) -> None:
        await connect("c1", 7)

        ((open_id, opened), (_, joined)) = log_entries(r)
        assert opened["p"] == "0-0"
        assert joined["p"] == open_id  # the second entry of the same script call

    async def test_every_script_links_to_the_entry_before(self, r: redis.Redis) -> None:
        first = await connect("c1", 1, rooms=("lobby", "x"))
        second = await connect("c2", 1, rooms=("lobby",))
        other = await connect("c3", 2, rooms=("lobby",))
        await store.set_status(1, "user1", "busy")
        await store.publish("lobby", '{"type": "chat"}')
        await store.room_leave(other, "lobby")
        await store.end_connections([first, second])
        swept = await connect("c4", 3, now=store.now_ms() - TTL_MS - 1_000, rooms=("y",))
        end_swept([swept])

        # Each entry on its home's stream (a user's and a connection's on the user's shard, a
        # room's on the room's), in this order within each stream.
        expected = [
            *(shape("open", 1), shape("join", 1, ""), shape("join", 1, "lobby")),
            shape("join", 1, "x"),  # c1: open, global join, lobby, x
            shape("open", 1),  # c2: second tab, lobby already joined
            *(shape("open", 2), shape("join", 2, ""), shape("join", 2, "lobby")),  # c3
            *(shape("status", 1, ""), shape("status", 1, "lobby"), shape("status", 1, "x")),
            shape("frame", room="lobby"),
            shape("leave", 2, "lobby"),  # c3 leaves the lobby
            # user halves: c1 (c2 still online), c2 (global)
            *(shape("close", 1), shape("leave", 1, ""), shape("close", 1)),
            *(shape("leave", 1, "x"), shape("leave", 1, "lobby")),  # room halves
            *(shape("open", 3), shape("join", 3, ""), shape("join", 3, "y")),  # c4
            # c4 swept: global, close, then its room y
            *(shape("leave", 3, ""), shape("close", 3), shape("leave", 3, "y")),
        ]
        assert shapes(r, None, "k", "u", "r") == by_home(expected)
        assert assert_every_stream_chained(r) == len(expected)

    async def test_concurrent_callers_keep_one_chain(self, r: redis.Redis) -> None:
        await asyncio.gather(*(connect(f"c{i}", i % 7, rooms=("lobby",)) for i in range(60)))

        # opens, then one global and one room join per user; each stream one chain
        assert assert_every_stream_chained(r) == 60 + 7 + 7

    async def test_links_to_an_entry_another_writer_appended(self, r: redis.Redis) -> None:
        shard = store.user_home(7)  # where c1's entries go
        foreign = str(r.xadd(store.keys(shard).events, {"k": "other"}))

        await connect("c1", 7)

        assert_chained(shard_entries(r, shard, since=foreign), first_p=foreign)


# --------------------------------------------------------------------------- trimming
class TestTrimming:
    MAXLEN = 10
    # MAXLEN ~ drops whole stream nodes only (up to 100 entries each by default).
    BOUND = MAXLEN + 200

    @pytest.fixture(autouse=True)
    def _small_log(self, settings: Settings) -> None:
        settings.PRESENCE_EVENT_LOG_MAXLEN = self.MAXLEN

    def prefill(self, r: redis.Redis, shard: int, n: int = 1_000) -> None:
        """Append ``n`` entries to ``shard``'s stream without trimming, as if the limit had
        just been lowered."""
        already = log_len(r, shard)
        pipe = r.pipeline(transaction=False)
        for i in range(n):
            pipe.xadd(store.keys(shard).events, {"k": "filler", "i": i})
        pipe.execute()
        assert log_len(r, shard) == already + n

    async def test_log_stays_bounded(self, r: redis.Redis) -> None:
        for i in range(300):
            ref = await connect(f"c{i}", i, rooms=("lobby",))
            await store.publish("lobby", "{}")
            await store.end_connections([ref])

        # 300 * 6 entries were appended: 300 * 3 to the lobby's stream (join, frame, leave),
        # the rest to the users' streams; each stream is trimmed on its own.
        lobby = store.room_home("lobby")
        assert 0 < log_len(r, lobby) < self.BOUND
        assert all(log_len(r, shard) < self.BOUND for shard in store.all_shards())
        # The oldest entry left points at one trimmed away: a reader can tell it missed some.
        entries = shard_entries(r, lobby)
        ((oldest_id, oldest),) = entries[:1]
        assert oldest["p"] != "0-0"
        assert store.stream_id_order(oldest["p"]) < store.stream_id_order(oldest_id)
        assert oldest["p"] not in {eid for eid, _ in entries}

    async def test_the_length_is_the_whole_logs_divided_over_the_shards(
        self, r: redis.Redis, settings: Settings
    ) -> None:
        # 64 shards share 6,400 entries: each stream keeps ~100 (MAXLEN ~ keeps up to one
        # more stream node), not 6,400 as a per-stream limit would.
        settings.PRESENCE_EVENT_LOG_MAXLEN = 64 * 100
        assert store.shard_count() == 64
        home = store.user_home(7)
        self.prefill(r, home, 2_000)
        await connect("c1", 7)
        assert 100 <= log_len(r, home) <= 300

    async def test_connect_trims(self, r: redis.Redis) -> None:
        self.prefill(r, store.user_home(7))
        await connect("c1", 7)
        assert log_len(r, store.user_home(7)) < self.BOUND

    async def test_end_trims(self, r: redis.Redis) -> None:
        ref = await connect("c1", 7)
        self.prefill(r, store.user_home(7))
        await store.end_connections([ref])
        assert log_len(r, store.user_home(7)) < self.BOUND

    async def test_room_join_and_leave_trim(self, r: redis.Redis) -> None:
        ref, lobby = await connect("c1", 7), store.room_home("lobby")
        self.prefill(r, lobby)
        await store.room_join(ref, "lobby")
        assert log_len(r, lobby) < self.BOUND
        self.prefill(r, lobby)
        await store.room_leave(ref, "lobby")
        assert log_len(r, lobby) < self.BOUND

    async def test_status_and_publish_trim(self, r: redis.Redis) -> None:
        self.prefill(r, store.user_home(7))
        await store.set_status(7, "user7", "busy")
        assert log_len(r, store.user_home(7)) < self.BOUND
        self.prefill(r, store.room_home("lobby"))
        await store.publish("lobby", "{}")
        assert log_len(r, store.room_home("lobby")) < self.BOUND


# --------------------------------------------------------------------------- atomicity
class TestFailedScriptWritesNoState:
    """The log the script appends to (its shard's) cannot be appended to: the script fails
    before changing anything."""

    async def test_connect(self, r: redis.Redis, rb: redis.Redis) -> None:
        k = user_keys(7)
        await connect("c0", 1)
        stats = r.hgetall(k.stats)
        break_log(r, k.shard)
        before = state(rb)

        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await connect("c1", 7)

        assert not r.exists(k.conn("c1"), k.user(7), k.user_conns(7))
        assert r.zscore(k.conns, "c1") is None
        assert r.zscore(k.users, "7") is None
        assert r.hgetall(k.stats) == stats
        assert_unchanged(before, state(rb))

    async def test_end(self, r: redis.Redis, rb: redis.Redis) -> None:
        k = user_keys(7)
        ref = await connect("c1", 7, rooms=("lobby",))
        break_log(r, k.shard)  # the user half's: the room half never runs
        before = state(rb)

        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await store.end_connections([ref])

        assert r.hget(k.conn("c1"), "uid") == "7"
        assert r.zscore(k.conns, "c1") is not None
        assert store.user_presence(7) == ("online", 1)
        assert store.list_online("lobby")[0] == 1
        assert_unchanged(before, state(rb))

    async def test_swept_end(self, r: redis.Redis, rb: redis.Redis) -> None:
        ref = await connect("c1", 7, now=store.now_ms() - TTL_MS - 1_000)
        break_log(r, store.user_home(7))
        before = state(rb)

        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            end_swept([ref])

        assert_unchanged(before, state(rb))

    async def test_room_join(self, r: redis.Redis, rb: redis.Redis) -> None:
        uk, rk = user_keys(7), room_keys("lobby")
        ref = await connect("c1", 7)
        break_log(r, rk.shard)  # the room half logs; the store takes the user half back
        before = state(rb)

        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await store.room_join(ref, "lobby")

        assert not r.exists(uk.conn_rooms("c1"), rk.room("lobby"), rk.room_user("lobby", 7))
        assert_unchanged(before, state(rb))

    async def test_room_leave(self, r: redis.Redis, rb: redis.Redis) -> None:
        uk, rk = user_keys(7), room_keys("lobby")
        ref = await connect("c1", 7, rooms=("lobby",))
        break_log(r, rk.shard)  # the room half logs; the store puts the user half back
        before = state(rb)

        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await store.room_leave(ref, "lobby")

        assert r.smembers(uk.conn_rooms("c1")) == {"lobby"}
        assert r.smembers(rk.room_user("lobby", 7)) == {"c1"}
        assert store.list_online("lobby")[0] == 1
        assert_unchanged(before, state(rb))

    async def test_status(self, r: redis.Redis, rb: redis.Redis) -> None:
        await connect("c1", 7)
        break_log(r, store.user_home(7))
        before = state(rb)

        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await store.set_status(7, "user7", "busy")

        assert r.hget(user_keys(7).user(7), "status") == "online"
        assert_unchanged(before, state(rb))


class TestFailedScriptLogsNothing:
    """A key the script reads before writing has the wrong type: no event, and no state."""

    async def test_connect(self, r: redis.Redis, rb: redis.Redis) -> None:
        await connect("c0", 1)
        retype(r, user_keys(7).user_conns(7))
        entries, before = log_len(r), state(rb)

        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await connect("c1", 7)

        assert log_len(r) == entries
        assert_unchanged(before, state(rb))

    async def test_end(self, r: redis.Redis, rb: redis.Redis) -> None:
        ref = await connect("c1", 7, rooms=("lobby",))
        retype(r, user_keys(7).conn("c1"))
        entries, before = log_len(r), state(rb)

        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await store.end_connections([ref])

        assert log_len(r) == entries
        assert_unchanged(before, state(rb))

    async def test_room_join(self, r: redis.Redis, rb: redis.Redis) -> None:
        ref = await connect("c1", 7)
        retype(r, room_keys("lobby").room("lobby"))
        entries, before = log_len(r), state(rb)

        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await store.room_join(ref, "lobby")

        assert log_len(r) == entries
        assert_unchanged(before, state(rb))

    async def test_room_leave(self, r: redis.Redis, rb: redis.Redis) -> None:
        ref = await connect("c1", 7, rooms=("lobby",))
        retype(r, user_keys(7).user(7))
        entries, before = log_len(r), state(rb)

        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await store.room_leave(ref, "lobby")

        assert log_len(r) == entries
        assert_unchanged(before, state(rb))

    async def test_status(self, r: redis.Redis, rb: redis.Redis) -> None:
        await connect("c1", 7)
        retype(r, user_keys(7).user(7))
        entries, before = log_len(r), state(rb)

        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await store.set_status(7, "user7", "busy")

        assert log_len(r) == entries
        assert_unchanged(before, state(rb))


class TestFailingAfterTheFirstWrite:
    """A key the script would first touch after writing something has the wrong type.

    Redis does not roll back a failed script, so each script checks the types of every key
    it writes (lib/eventlog.lua expect_types) before its first write: neither state nor
    event, as when the key was read first.
    """

    async def test_connect_with_a_broken_user_hash(self, r: redis.Redis, rb: redis.Redis) -> None:
        await connect("c0", 1)
        retype(r, user_keys(7).user(7))
        entries, before = log_len(r), state(rb)

        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await connect("c1", 7)

        assert log_len(r) == entries
        assert_unchanged(before, state(rb))

    async def test_end_with_a_broken_room(self, r: redis.Redis, rb: redis.Redis) -> None:
        rk = room_keys("lobby")
        ref = await connect("c1", 7, rooms=("lobby",))
        retype(r, rk.room("lobby"))
        entries, before = log_len(r), state(rb)

        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await store.end_connections([ref])

        # The user half is a script of its own and ran whole (global leave, close); the room
        # half failed whole: the room still holds the user (repair_rooms' to remove).
        assert log_len(r) == entries + 2
        after = state(rb)
        for key in (rk.room("lobby"), rk.room_user("lobby", 7)):
            assert after[key][0] == before[key][0]  # the value (its expiry moves on)


@contextmanager
def out_of_memory(r: redis.Redis) -> Iterator[None]:
    """Redis over its memory limit (``maxmemory`` 1 byte, noeviction) inside the block."""
    previous = r.config_get("maxmemory")["maxmemory"]
    r.config_set("maxmemory", 1)
    try:
        yield
    finally:
        r.config_set("maxmemory", previous)


class TestOutOfMemory:
    """Redis over ``maxmemory`` refuses a script's first write that needs memory, and only
    before the script wrote anything: it runs whole or not at all."""

    async def test_connect_is_refused_whole(self, r: redis.Redis, rb: redis.Redis) -> None:
        await connect("c0", 1)
        entries, before = log_len(r), state(rb)

        with out_of_memory(r), pytest.raises(redis.ResponseError, match="OOM"):
            await connect("c1", 7)

        assert log_len(r) == entries
        assert_unchanged(before, state(rb))

    async def test_end_still_ends_and_logs(self, r: redis.Redis) -> None:
        ref = await connect("c1", 7, rooms=("lobby",))
        mark = log_mark(r)

        with out_of_memory(r):
            (res,) = await store.end_connections([ref])

        assert res.state == 1
        assert not r.hexists(user_keys(7).conn("c1"), "uid")  # a tombstone at most
        assert store.user_presence(7) == (None, 0)
        assert shapes(r, mark, "k", "u", "r", "c") == by_home(
            [shape("leave", 7, ""), shape("close", 7, c="c1"), shape("leave", 7, "lobby")]
        )


class TestKilledCaller:
    """A caller killed right after sending: the script still runs whole, state and events."""

    def test_connect_leaves_state_and_event(
        self, r: redis.Redis, redis_server: RedisServer
    ) -> None:
        k, now = user_keys(7), store.now_ms()
        sha = r.script_load(store.script("connect").source)

        send_and_vanish(redis_server, connect_command(sha, "c1", 7, now))

        wait_for(lambda: bool(r.exists(k.conn("c1"))))
        assert r.zscore(k.conns, "c1") == now + TTL_MS
        assert [(e["k"], e.get("c"), e["t"]) for e in logged(r)] == [
            ("open", "c1", str(now)),
            ("join", None, str(now)),
        ]

    async def test_end_leaves_removal_and_events(
        self, r: redis.Redis, redis_server: RedisServer
    ) -> None:
        k, now = user_keys(7), store.now_ms()
        ref = await connect("c1", 7, now=now, rooms=("lobby",))
        mark = log_mark(r)
        sha = r.script_load(store.script("end").source)

        send_and_vanish(redis_server, end_command(sha, ref, now + 1, "server_shutdown"))

        await asyncio.to_thread(wait_for, lambda: not r.hexists(k.conn("c1"), "uid"))
        assert store.user_presence(7) == (None, 0)
        assert [(e["k"], e.get("r"), e["why"]) for e in logged(r, since=mark)] == [
            ("leave", "", "server_shutdown"),
            ("close", None, "server_shutdown"),
        ]
        # The caller died before the room half: the room keeps the user until the repair
        # (the sweep) finds the membership lapsed past the key grace, and logs its leave.
        later = now + TTL_MS + GRACE_MS + 1
        assert store.repair_rooms(store.room_home("lobby"), later) == 1
        assert store.list_online("lobby") == (0, [])
