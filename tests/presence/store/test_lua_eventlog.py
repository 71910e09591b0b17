"""The presence event log ({P}:events) as every script writes it (presence/lua/lib/eventlog.lua).

Covers the chain of entries (each ``p`` is the id of the entry before it, across scripts and
within one script), trimming to ``PRESENCE_EVENT_LOG_MAXLEN``, and atomicity: a script that
fails leaves neither state nor event, and a caller that dies right after sending leaves both.
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
from tests.support.eventlog import log_entries, log_len, log_mark, logged
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
    """EVALSHA of connect.lua with KEYS/ARGV exactly as its header documents them."""
    k = store.keys()
    ks = [k.conns, k.users, k.stats, k.conn(cid), k.conn_rooms(cid), k.user(uid)]
    ks += [k.user_conns(uid), k.events]
    ks += [k.user_block(uid)]
    ks += [k.user_revoked(uid), k.login_revoked(""), k.token_used(""), k.active]
    ks += [k.held, k.held_why]
    args = [now, TTL_MS, GRACE_MS, cid, uid, f"user{uid}", "ch", 1_000, "192.0.2.1", "UA"]
    args += [0, 0, "", 0, "", "register"]
    return ["EVALSHA", sha, len(ks), *ks, *args]


def end_command(sha: str, conn: store.ConnRef, now: int, reason: str) -> list[Any]:
    """EVALSHA of end.lua ('closed' mode) with KEYS/ARGV exactly as its header documents."""
    k = store.keys()
    ks = [*k.fixed(), k.events, k.held, k.held_why]
    ks += k.conn_group(conn.cid, conn.uid, [])
    args = [now, "closed", reason, TTL_MS, 1_000, 0, 1, conn.cid, conn.uid]
    return ["EVALSHA", sha, len(ks), *ks, *args]


@pytest.fixture
def rb(redis_server: RedisServer) -> redis.Redis:
    """A client on the test Redis that returns bytes (for DUMP)."""
    return redis.Redis.from_url(redis_server.url)


def state(rb: redis.Redis) -> State:
    """Every key but the event log: its serialized value (DUMP) and time to live (ms)."""
    events = store.keys().events.encode()
    out: State = {}
    for key in sorted(rb.keys("*")):  # type: ignore[union-attr]
        if key != events:
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


def break_log(r: redis.Redis) -> None:
    """Replace the event log with a plain string: the next append fails (WRONGTYPE)."""
    r.delete(store.keys().events)
    r.set(store.keys().events, "x")


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
        store.end_swept_connections([swept])

        entries = log_entries(r)
        assert [fields["k"] for _, fields in entries] == [
            *("open", "join", "join", "join"),  # c1: open, global join, lobby, x
            "open",  # c2: second tab, lobby already joined
            *("open", "join", "join"),  # c3
            *("status", "status", "status"),  # global, lobby, x
            "frame",
            "leave",  # c3 leaves the lobby
            *("close", "leave", "close"),  # user halves: c1 (c2 still online), c2 (global)
            *("leave", "leave"),  # room halves: c1 leaves x, c2 the lobby
            *("open", "join", "join"),  # c4
            *("leave", "close", "leave"),  # c4 swept: global, close, then its room y
        ]
        assert_chained(entries)

    async def test_concurrent_callers_keep_one_chain(self, r: redis.Redis) -> None:
        await asyncio.gather(*(connect(f"c{i}", i % 7, rooms=("lobby",)) for i in range(60)))

        entries = log_entries(r)
        assert len(entries) == 60 + 7 + 7  # opens, then one global and one room join per user
        assert_chained(entries)

    async def test_links_to_an_entry_another_writer_appended(self, r: redis.Redis) -> None:
        foreign = str(r.xadd(store.keys().events, {"k": "other"}))

        await connect("c1", 7)

        assert_chained(log_entries(r, since=foreign), first_p=foreign)


# --------------------------------------------------------------------------- trimming
class TestTrimming:
    MAXLEN = 10
    # MAXLEN ~ drops whole stream nodes only (up to 100 entries each by default).
    BOUND = MAXLEN + 200

    @pytest.fixture(autouse=True)
    def _small_log(self, settings: Settings) -> None:
        settings.PRESENCE_EVENT_LOG_MAXLEN = self.MAXLEN

    def prefill(self, r: redis.Redis, n: int = 1_000) -> None:
        """Append ``n`` entries without trimming, as if the limit had just been lowered."""
        already = log_len(r)
        pipe = r.pipeline(transaction=False)
        for i in range(n):
            pipe.xadd(store.keys().events, {"k": "filler", "i": i})
        pipe.execute()
        assert log_len(r) == already + n

    async def test_log_stays_bounded(self, r: redis.Redis) -> None:
        for i in range(300):
            ref = await connect(f"c{i}", i, rooms=("lobby",))
            await store.publish("lobby", "{}")
            await store.end_connections([ref])

        assert 0 < log_len(r) < self.BOUND  # 300 * 6 entries were appended
        # The oldest entry left points at one trimmed away: a reader can tell it missed some.
        ((oldest_id, oldest),) = log_entries(r)[:1]
        assert oldest["p"] != "0-0"
        assert store.stream_id_order(oldest["p"]) < store.stream_id_order(oldest_id)
        assert oldest["p"] not in {eid for eid, _ in log_entries(r)}

    async def test_connect_trims(self, r: redis.Redis) -> None:
        self.prefill(r)
        await connect("c1", 7)
        assert log_len(r) < self.BOUND

    async def test_end_trims(self, r: redis.Redis) -> None:
        ref = await connect("c1", 7)
        self.prefill(r)
        await store.end_connections([ref])
        assert log_len(r) < self.BOUND

    async def test_room_join_and_leave_trim(self, r: redis.Redis) -> None:
        ref = await connect("c1", 7)
        self.prefill(r)
        await store.room_join(ref, "lobby")
        assert log_len(r) < self.BOUND
        self.prefill(r)
        await store.room_leave(ref, "lobby")
        assert log_len(r) < self.BOUND

    async def test_status_and_publish_trim(self, r: redis.Redis) -> None:
        self.prefill(r)
        await store.set_status(7, "user7", "busy")
        assert log_len(r) < self.BOUND
        self.prefill(r)
        await store.publish("lobby", "{}")
        assert log_len(r) < self.BOUND


# --------------------------------------------------------------------------- atomicity
class TestFailedScriptWritesNoState:
    """The log cannot be appended to: the script fails before changing anything."""

    async def test_connect(self, r: redis.Redis, rb: redis.Redis) -> None:
        k = store.keys()
        await connect("c0", 1)
        stats = r.hgetall(k.stats)
        break_log(r)
        before = state(rb)

        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await connect("c1", 7)

        assert not r.exists(k.conn("c1"), k.user(7), k.user_conns(7))
        assert r.zscore(k.conns, "c1") is None
        assert r.zscore(k.users, "7") is None
        assert r.hgetall(k.stats) == stats
        assert_unchanged(before, state(rb))

    async def test_end(self, r: redis.Redis, rb: redis.Redis) -> None:
        k = store.keys()
        ref = await connect("c1", 7, rooms=("lobby",))
        break_log(r)
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
        break_log(r)
        before = state(rb)

        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            store.end_swept_connections([ref])

        assert_unchanged(before, state(rb))

    async def test_room_join(self, r: redis.Redis, rb: redis.Redis) -> None:
        k = store.keys()
        ref = await connect("c1", 7)
        break_log(r)
        before = state(rb)

        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await store.room_join(ref, "lobby")

        assert not r.exists(k.conn_rooms("c1"), k.room("lobby"), k.room_user("lobby", 7))
        assert_unchanged(before, state(rb))

    async def test_room_leave(self, r: redis.Redis, rb: redis.Redis) -> None:
        k = store.keys()
        ref = await connect("c1", 7, rooms=("lobby",))
        break_log(r)
        before = state(rb)

        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await store.room_leave(ref, "lobby")

        assert r.smembers(k.conn_rooms("c1")) == {"lobby"}
        assert r.smembers(k.room_user("lobby", 7)) == {"c1"}
        assert store.list_online("lobby")[0] == 1
        assert_unchanged(before, state(rb))

    async def test_status(self, r: redis.Redis, rb: redis.Redis) -> None:
        await connect("c1", 7)
        break_log(r)
        before = state(rb)

        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await store.set_status(7, "user7", "busy")

        assert r.hget(store.keys().user(7), "status") == "online"
        assert_unchanged(before, state(rb))


class TestFailedScriptLogsNothing:
    """A key the script reads before writing has the wrong type: no event, and no state."""

    async def test_connect(self, r: redis.Redis, rb: redis.Redis) -> None:
        await connect("c0", 1)
        retype(r, store.keys().user_conns(7))
        entries, before = log_len(r), state(rb)

        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await connect("c1", 7)

        assert log_len(r) == entries
        assert_unchanged(before, state(rb))

    async def test_end(self, r: redis.Redis, rb: redis.Redis) -> None:
        ref = await connect("c1", 7, rooms=("lobby",))
        retype(r, store.keys().conn("c1"))
        entries, before = log_len(r), state(rb)

        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await store.end_connections([ref])

        assert log_len(r) == entries
        assert_unchanged(before, state(rb))

    async def test_room_join(self, r: redis.Redis, rb: redis.Redis) -> None:
        ref = await connect("c1", 7)
        retype(r, store.keys().room("lobby"))
        entries, before = log_len(r), state(rb)

        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await store.room_join(ref, "lobby")

        assert log_len(r) == entries
        assert_unchanged(before, state(rb))

    async def test_room_leave(self, r: redis.Redis, rb: redis.Redis) -> None:
        ref = await connect("c1", 7, rooms=("lobby",))
        retype(r, store.keys().user(7))
        entries, before = log_len(r), state(rb)

        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await store.room_leave(ref, "lobby")

        assert log_len(r) == entries
        assert_unchanged(before, state(rb))

    async def test_status(self, r: redis.Redis, rb: redis.Redis) -> None:
        await connect("c1", 7)
        retype(r, store.keys().user(7))
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
        retype(r, store.keys().user(7))
        entries, before = log_len(r), state(rb)

        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await connect("c1", 7)

        assert log_len(r) == entries
        assert_unchanged(before, state(rb))

    async def test_end_with_a_broken_room(self, r: redis.Redis, rb: redis.Redis) -> None:
        ref = await connect("c1", 7, rooms=("lobby",))
        retype(r, store.keys().room("lobby"))
        entries, before = log_len(r), state(rb)

        with pytest.raises(redis.ResponseError, match="WRONGTYPE"):
            await store.end_connections([ref])

        # The user half is a script of its own and ran whole (global leave, close); the room
        # half failed whole: the room still holds the user (repair_rooms' to remove).
        assert log_len(r) == entries + 2
        after = state(rb)
        for key in (store.keys().room("lobby"), store.keys().room_user("lobby", 7)):
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
        assert not r.hexists(store.keys().conn("c1"), "uid")  # a tombstone at most
        assert store.user_presence(7) == (None, 0)
        assert [(e["k"], e.get("r"), e.get("c")) for e in logged(r, since=mark)] == [
            ("leave", "", None),
            ("close", None, "c1"),
            ("leave", "lobby", None),
        ]


class TestKilledCaller:
    """A caller killed right after sending: the script still runs whole, state and events."""

    def test_connect_leaves_state_and_event(
        self, r: redis.Redis, redis_server: RedisServer
    ) -> None:
        k, now = store.keys(), store.now_ms()
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
        k, now = store.keys(), store.now_ms()
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
