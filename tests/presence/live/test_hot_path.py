"""The heartbeat hot path: zero SQL, one Redis round trip, batching across connections.

SQL is counted with ``execute_wrapper`` on every database connection of every thread (the
consumer reaches the database from worker threads); the same counter must see the INSERT
of connect and the UPDATE of close, which proves it would see a query added to heartbeats.
Redis commands are counted server-side from the private server's SLOWLOG; round trips on
the wire (tests/support/wire.py). With split homes a batch is one EVALSHA per shard it
touches (its users' and its rooms' shards), all of one node in one pipeline: the tests run
on one Redis, so a heartbeat batch is one round trip however many shards it touches.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async
from django.db import connection as default_connection
from django.db.backends.signals import connection_created
from pytest_django.fixtures import Settings

from config.embedded_redis import RedisServer
from presence import consumers, store
from presence.access.auth import mint_token
from presence.live import inbox
from presence.live.batching import HotPathWriter, get_writer
from presence.obs.logs import store_outage
from sessions_app.models import ConnectionSession
from tests.support.homes import room_keys, user_keys
from tests.support.wire import ScriptTrips, counting_script_trips, stats_sum

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]

WSFactory = Callable[..., Awaitable[Any]]
UserFactory = Callable[..., Awaitable[Any]]

MEASURER = "pytest-measure"


class CommandLog:
    """Every command clients send to the private Redis, from its SLOWLOG (threshold 0).

    Commands a Lua script runs are logged too, under the fake address ``?:0``: they are left
    out, so each entry is one command a client sent. Those that other parts of the process
    send on their own schedule are left out as well: the channel layer (keys
    under ``asgi``) and the handler control poller (its two keys).
    """

    BACKGROUND = {
        ("GET", "{presence}:handlers:version"),
        ("SMEMBERS", "{presence}:handlers:disabled"),
    }
    # The event log's reader and the session writer read the log on their own schedule,
    # never on a client's request: their stream commands are left out.
    LOG_READERS = {"XREAD", "XREADGROUP", "XACK", "XAUTOCLAIM", "XPENDING", "XGROUP", "XINFO"}
    # The process inspector waits for operators' requests (presence/live/inspector.py).
    INSPECTOR = {"BLPOP"}

    def __init__(self, url: str) -> None:
        # Raw bytes: channel-layer payloads in the log are not text.
        self.r = redis.Redis.from_url(url)
        self.saved = {_text(k): _text(v) for k, v in self.r.config_get("slowlog-*").items()}

    def start(self) -> None:
        self.r.client_setname(MEASURER)
        self.r.config_set("slowlog-log-slower-than", 0)
        self.r.config_set("slowlog-max-len", 100_000)
        self.r.slowlog_reset()

    def commands(self) -> list[list[str]]:
        """Commands sent since ``start()``, oldest first, as [name, arg1, ...]."""
        out = []
        for entry in reversed(self.r.slowlog_get(100_000)):
            if _text(entry.get("client_address")) == "?:0":
                continue  # run by a script
            if _text(entry.get("client_name")) == MEASURER:
                continue
            words = _text(entry["command"]).split()
            name = words[0].upper()
            key = words[1] if len(words) > 1 else ""
            if name != "EVALSHA" and any(w.startswith("asgi") for w in words[1:]):
                continue  # the channel layer (channels_redis keys are under "asgi")
            if (name, key) in self.BACKGROUND or name in self.LOG_READERS | self.INSPECTOR:
                continue
            out.append([name, *words[1:]])
        return self._without_connection_setups(out)

    @staticmethod
    def _without_connection_setups(commands: list[list[str]]) -> list[list[str]]:
        """Drop what redis-py sends on its own about a pooled connection.

        A new connection starts with PING and CLIENT SETINFO (library name and version); the
        pool opens one when two commands of the process overlap (a heartbeat batch and the
        handler-control poll), which is no part of any heartbeat. A connection unused for
        ``health_check_interval`` (30 s; process-wide sync clients outlive a test) is PINGed
        before its next command. Neither is a command of ours: every PING is dropped.
        """
        return [c for c in commands if c[:2] != ["CLIENT", "SETINFO"] and c != ["PING"]]

    def names(self) -> Counter[str]:
        return Counter(c[0] for c in self.commands())

    def restore(self) -> None:
        self.r.config_set("slowlog-log-slower-than", self.saved["slowlog-log-slower-than"])
        self.r.config_set("slowlog-max-len", self.saved["slowlog-max-len"])
        self.r.slowlog_reset()
        self.r.close()


async def register(refs: list[store.ConnRef]) -> None:
    """Make connections known to the store, without sockets."""
    now = store.now_ms()
    for ref in refs:
        await store.connect(cid=ref.cid, uid=ref.uid, username="u", channel="x", now=now)


def register_while_the_loop_waits(refs: list[store.ConnRef]) -> None:
    """``register`` on a loop of its own (the store's clients are per event loop) in a
    thread, joined without awaiting: nothing of the calling event loop runs before every
    connection is known. The thread's exception, if any, is raised here."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(register(refs))
        except BaseException as exc:
            failure.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(10)
    assert not thread.is_alive(), "registering took over 10 s"
    if failure:
        raise failure[0]


def _text(value: Any) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value or "")


@pytest.fixture
def redis_log(redis_server: RedisServer) -> Iterator[CommandLog]:
    log = CommandLog(redis_server.url)
    yield log
    log.restore()


@pytest.fixture
def script_trips() -> Iterator[ScriptTrips]:
    with counting_script_trips() as trips:
        yield trips


class QueryCounter:
    """Records the SQL of every database connection it is installed on, from any thread."""

    def __init__(self) -> None:
        self.sql: list[str] = []
        self._lock = threading.Lock()
        self._installed: list[Any] = []

    def __call__(self, execute: Any, sql: str, params: Any, many: bool, context: Any) -> Any:
        with self._lock:
            self.sql.append(sql)
        return execute(sql, params, many, context)

    def install(self, conn: Any) -> None:
        with self._lock:
            if self not in conn.execute_wrappers:
                conn.execute_wrappers.append(self)
                self._installed.append(conn)

    def install_on_this_thread(self) -> None:
        self.install(default_connection)

    def on_connection_created(self, sender: Any, connection: Any, **kwargs: Any) -> None:
        self.install(connection)

    def uninstall(self) -> None:
        with self._lock:
            for conn in self._installed:
                if self in conn.execute_wrappers:
                    conn.execute_wrappers.remove(self)

    def count(self, needle: str) -> int:
        return sum(needle in sql for sql in self.sql)


@pytest.fixture
async def sql() -> AsyncIterator[QueryCounter]:
    counter = QueryCounter()
    connection_created.connect(counter.on_connection_created, weak=False)
    counter.install_on_this_thread()
    # The thread that database_sync_to_async (thread-sensitive) runs the consumer's ORM in.
    await sync_to_async(counter.install_on_this_thread)()
    yield counter
    connection_created.disconnect(counter.on_connection_created)
    counter.uninstall()


@pytest.fixture(autouse=True)
def _no_inbox_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    # The inbox pings the channel layer's Redis after 10 s without a message (a keyless PING
    # the command log cannot tell from a client's): on a slow machine a test outlasts that.
    monkeypatch.setattr(inbox, "PROBE_INTERVAL", 3600.0)


@pytest.fixture(autouse=True)
def _no_counter_timer(settings: Settings) -> None:
    # Buffered counters otherwise go out on their own after 1 s; here they must only ride along.
    settings.PRESENCE_COUNTER_FLUSH_INTERVAL = 60


async def until(check: Callable[[], bool], within: float = 5.0) -> None:
    """Wait until ``check()`` holds (the session writer works behind the connection)."""
    deadline = asyncio.get_running_loop().time() + within
    while not check():
        assert asyncio.get_running_loop().time() < deadline, "condition not met in time"
        await asyncio.sleep(0.02)


async def rows_written(n: int) -> None:
    """Wait until the session writer has written ``n`` rows (it works behind connects)."""
    count = ConnectionSession.objects.acount
    deadline = asyncio.get_running_loop().time() + 5.0
    while await count() < n:
        assert asyncio.get_running_loop().time() < deadline, f"{n} session rows not written"
        await asyncio.sleep(0.02)


class TestZeroSql:
    async def test_heartbeats_run_no_query(
        self, ws_client: WSFactory, auser_factory: UserFactory, sql: QueryCounter
    ) -> None:
        client = await ws_client(await auser_factory("alice"))
        # The counter sees every query of this process: the session row is inserted once,
        # behind the connect (by the session writer, from the event log).
        await rows_written(1)
        before = len(sql.sql)

        for i in range(25):
            assert (await client.request("heartbeat", id_=i))["type"] == "heartbeat.ack"

        assert sql.sql[before:] == []
        await client.close()
        await until(lambda: sql.count('UPDATE "sessions_app_connectionsession"') == 1)
        assert sql.count('INTO "sessions_app_connectionsession"') == 1

    async def test_connect_runs_no_query_but_authentication(
        self,
        ws_client: WSFactory,
        auser_factory: UserFactory,
        sql: QueryCounter,
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        # The session writer would insert the row concurrently; without it running in this
        # loop, every query seen is the connect path's own.
        async def no_writer() -> None:
            return None

        monkeypatch.setattr(consumers, "ensure_session_writer", no_writer)
        token = await sync_to_async(mint_token)(await auser_factory("alice"))
        before = len(sql.sql)

        client = await ws_client(token=token)

        assert client.hello is not None
        # Token authentication's user lookup, and nothing of the consumer's.
        assert len(sql.sql[before:]) == 1
        assert 'FROM "auth_user"' in sql.sql[before]

    async def test_heartbeats_of_many_connections_run_no_query(
        self, ws_client: WSFactory, auser_factory: UserFactory, sql: QueryCounter
    ) -> None:
        clients = [await ws_client(await auser_factory(f"u{i}")) for i in range(5)]
        await rows_written(5)
        before = len(sql.sql)

        for client in clients:
            await client.send({"type": "heartbeat", "id": 1})
        for client in clients:
            await client.recv_until(lambda f: f["type"] == "heartbeat.ack")

        assert sql.sql[before:] == []


class TestOneRoundTrip:
    async def test_each_heartbeat_is_one_evalsha_and_nothing_else(
        self,
        ws_client: WSFactory,
        auser_factory: UserFactory,
        r: redis.Redis,
        redis_log: CommandLog,
        script_trips: ScriptTrips,
    ) -> None:
        client = await ws_client(await auser_factory("alice"))
        await client.request("heartbeat", id_="warm-up")  # script loaded, clients connected
        sid, n = client.hello["session_id"], 20
        redis_log.start()
        script_trips.clear()

        for i in range(n):
            await client.request("heartbeat", id_=i)

        sent = redis_log.commands()
        # A user in no room: each batch touches the user's shard alone (the counters ride
        # with it), so one EVALSHA each, in one round trip each.
        assert [c[0] for c in sent] == ["EVALSHA"] * n
        assert all(sid in c for c in sent)  # each refreshed this connection
        assert script_trips.total() == n
        stats = stats_sum(r)
        assert stats["heartbeats"] == n + 1
        # Message counters rode along in the same calls.
        assert stats["msg:heartbeat"] == n + 1

    async def test_a_room_member_heartbeat_is_still_one_round_trip(
        self,
        ws_client: WSFactory,
        auser_factory: UserFactory,
        r: redis.Redis,
        redis_log: CommandLog,
        script_trips: ScriptTrips,
    ) -> None:
        client = await ws_client(await auser_factory("alice"))
        for room in ("a", "b", "c"):
            await client.request("room.join", {"room": room}, id_=room)
        await client.request("heartbeat", id_="warm-up")
        uid = client.hello["user"]["id"]
        redis_log.start()
        script_trips.clear()

        await client.request("heartbeat", id_=1)

        # One EVALSHA per shard the heartbeat touches (the user's, the rooms'), one pipeline.
        touched = {store.user_home(uid)} | {store.room_home(x) for x in "abc"}
        assert redis_log.names() == Counter({"EVALSHA": len(touched)})
        assert script_trips.total() == 1
        ttl_ms = client.hello["presence_ttl"] * 1000
        scores = [r.zscore(room_keys(x).room(x), str(uid)) for x in "abc"]
        assert all((s or 0) > store.now_ms() + ttl_ms - 5_000 for s in scores)

    async def test_the_log_sees_commands_outside_scripts(
        self, ws_client: WSFactory, auser_factory: UserFactory, redis_log: CommandLog
    ) -> None:
        """Guard for the assertions above: a non-heartbeat request does show up."""
        client = await ws_client(await auser_factory("alice"))
        redis_log.start()

        await client.request("presence.list")

        assert "ZCOUNT" in redis_log.names()


class TestBatching:
    async def test_concurrent_heartbeats_share_calls(
        self,
        ws_client: WSFactory,
        auser_factory: UserFactory,
        r: redis.Redis,
        redis_log: CommandLog,
        script_trips: ScriptTrips,
    ) -> None:
        n = 20
        users = [await auser_factory(f"u{i}") for i in range(n)]
        clients = await asyncio.gather(*(ws_client(u) for u in users))
        await clients[0].request("heartbeat", id_="warm-up")
        homes = [user_keys(c.hello["user"]["id"]) for c in clients]
        for client, k in zip(clients, homes, strict=True):  # as if about to lapse
            r.zadd(k.conns, {client.hello["session_id"]: 1})
        redis_log.start()
        script_trips.clear()

        for client in clients:
            await client.send({"type": "heartbeat", "id": "hb"})
        acks = [await c.recv_until(lambda f: f["type"] == "heartbeat.ack") for c in clients]

        calls = redis_log.names()
        assert acks == [{"type": "heartbeat.ack", "id": "hb"}] * n
        assert set(calls) == {"EVALSHA"}
        # Batched: fewer round trips than heartbeats, each one EVALSHA per user shard in it.
        trips, shards = script_trips.total(), len({k.shard for k in homes})
        assert 1 <= trips <= n // 2
        assert shards <= calls["EVALSHA"] <= min(n, trips * shards)
        # Every connection was refreshed all the same.
        assert all(
            (r.zscore(k.conns, c.hello["session_id"]) or 0) > 1
            for c, k in zip(clients, homes, strict=True)
        )

    async def test_writer_batches_what_arrives_together(
        self, redis_log: CommandLog, script_trips: ScriptTrips
    ) -> None:
        refs = [store.ConnRef(f"c{i}", i) for i in range(30)]
        await register(refs[:25])  # the last 5 are unknown connections (the store lost them)
        await store.end_connections(refs[20:25])  # 5 ended ones
        writer = HotPathWriter()
        await writer.heartbeat(refs[0])  # warm-up
        redis_log.start()
        script_trips.clear()

        results = await asyncio.gather(*(writer.heartbeat(ref) for ref in refs))

        assert results == [store.HB_ALIVE] * 20 + [store.HB_ENDED] * 5 + [store.HB_LOST] * 5
        # One batch: one round trip, one EVALSHA per user shard among the 30.
        shards = {store.user_home(ref.uid) for ref in refs}
        assert redis_log.names() == Counter({"EVALSHA": len(shards)})
        assert script_trips.total() == 1

    async def test_batches_are_capped(
        self, redis_log: CommandLog, settings: Settings, script_trips: ScriptTrips
    ) -> None:
        settings.PRESENCE_HEARTBEAT_BATCH_MAX = 8
        refs = [store.ConnRef(f"c{i}", i) for i in range(20)]
        await register(refs)
        writer = HotPathWriter()
        await writer.heartbeat(refs[0])
        redis_log.start()
        script_trips.clear()

        results = await asyncio.gather(*(writer.heartbeat(ref) for ref in refs))

        assert results == [True] * 20
        # Three batches in arrival order (8, 8, 4): a round trip each, one EVALSHA per user
        # shard of each batch.
        batches = [refs[i : i + 8] for i in range(0, 20, 8)]
        per_batch = [len({store.user_home(ref.uid) for ref in batch}) for batch in batches]
        assert redis_log.names() == Counter({"EVALSHA": sum(per_batch)})
        assert script_trips.total() == 3

    async def test_counters_ride_along_or_flush_on_their_own(
        self, r: redis.Redis, redis_log: CommandLog, settings: Settings
    ) -> None:
        await store.connect(cid="c", uid=1, username="u", channel="x")
        writer = HotPathWriter()
        # Alone, the test's first heartbeat would load the script (SCRIPT LOAD, EVALSHA
        # again) inside the log; the suite's earlier tests had always loaded it.
        assert await writer.heartbeat(store.ConnRef("c", 1)) == store.HB_ALIVE
        writer.count("msg:test", 2)
        redis_log.start()

        assert await writer.heartbeat(store.ConnRef("c", 1)) == store.HB_ALIVE

        # The counters rode with the user's section: one EVALSHA on the user's shard.
        assert redis_log.names() == Counter({"EVALSHA": 1})
        assert r.hget(user_keys(1).stats, "msg:test") == "2"

        settings.PRESENCE_COUNTER_FLUSH_INTERVAL = 0.05
        writer.count("msg:test", 3)
        redis_log.start()
        for _ in range(150):  # the timer fires after 0.05 s; allow up to 3 s
            if stats_sum(redis_log.r)["msg:test"] == 5:  # not logged: the measurer's
                break
            await asyncio.sleep(0.02)

        assert redis_log.names() == Counter({"EVALSHA": 1})  # alone, in one call
        assert stats_sum(r)["msg:test"] == 5

    async def test_flush_writes_buffered_counters(self, r: redis.Redis) -> None:
        writer = get_writer()
        writer.count("err:bad_json")

        await writer.flush()

        assert stats_sum(r)["err:bad_json"] == 1


class TestRedisDown:
    """The store away: heartbeats are held and acknowledged late, within bounds."""

    async def test_a_pause_holds_heartbeats_and_acks_them_when_it_ends(
        self, redis_server: RedisServer, settings: Settings
    ) -> None:
        settings.PRESENCE_REDIS_SOCKET_TIMEOUT = 0.5  # each try gives up quickly
        store.reset_clients()
        refs = [store.ConnRef(f"c{i}", i) for i in range(5)]
        await register(refs)
        writer = HotPathWriter()
        loop = asyncio.get_running_loop()
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        resumed = loop.call_later(2.0, os.kill, redis_server.process.pid, signal.SIGCONT)
        try:
            started = time.monotonic()
            async with asyncio.timeout(15):
                results = await asyncio.gather(*(writer.heartbeat(ref) for ref in refs))
            waited = time.monotonic() - started
        finally:
            resumed.cancel()
            os.kill(redis_server.process.pid, signal.SIGCONT)

        assert results == [store.HB_ALIVE] * 5  # late, but no error
        assert waited >= 1.5, waited
        assert writer.holding == 0

    async def test_past_the_hold_a_heartbeat_is_answered_unavailable(
        self, redis_server: RedisServer, settings: Settings
    ) -> None:
        settings.PRESENCE_HEARTBEAT_BATCH_MAX = 2  # five heartbeats: three batches
        settings.PRESENCE_HEARTBEAT_HOLD = 0.5
        refs = [store.ConnRef(f"c{i}", i) for i in range(5)]
        writer = HotPathWriter()
        redis_server.kill()
        try:
            started = time.monotonic()
            async with asyncio.timeout(10):
                results = await asyncio.gather(
                    *(writer.heartbeat(ref) for ref in refs), return_exceptions=True
                )
            waited = time.monotonic() - started
        finally:
            redis_server.start()

        assert all(isinstance(res, store.StoreUnavailableError) for res in results), results
        assert 0.5 <= waited < 5, waited

        # Once Redis is back, heartbeats go through again (script reloaded, new connections).
        await store.connect(cid="c0", uid=0, username="u", channel="x")
        assert await writer.heartbeat(refs[0]) == store.HB_ALIVE

    async def test_a_full_hold_refuses_at_once(
        self, redis_server: RedisServer, settings: Settings
    ) -> None:
        settings.PRESENCE_HEARTBEAT_HOLD_MAX = 2
        settings.PRESENCE_HEARTBEAT_HOLD = 3
        refs = [store.ConnRef(f"c{i}", i) for i in range(3)]
        writer = HotPathWriter()
        redis_server.kill()
        try:
            held = [asyncio.ensure_future(writer.heartbeat(ref)) for ref in refs[:2]]
            for _ in range(500):  # until the first try failed: the store is away
                if writer.holding:
                    break
                await asyncio.sleep(0.01)
            started = time.monotonic()
            with pytest.raises(store.StoreUnavailableError):
                await writer.heartbeat(refs[2])
            assert time.monotonic() - started < 0.1
        finally:
            redis_server.start()
            # Registered before this event loop runs again: a held retry in between would
            # find c1 unknown (HB_LOST), as it did on a busy machine.
            register_while_the_loop_waits(refs[:2])
        assert await asyncio.gather(*held) == [store.HB_ALIVE] * 2

    async def test_a_broken_key_fails_at_once_and_is_not_held(self, r: redis.Redis) -> None:
        r.set(user_keys(1).conn("c"), "not a hash")  # WRONGTYPE: a bug, not an outage
        writer = HotPathWriter()
        started = time.monotonic()
        with pytest.raises(redis.ResponseError):
            await writer.heartbeat(store.ConnRef("c", 1))
        assert time.monotonic() - started < 2
        assert writer.holding == 0

    async def test_an_outage_logs_one_warning_per_interval_with_a_count(
        self, redis_server: RedisServer, settings: Settings, caplog: pytest.LogCaptureFixture
    ) -> None:
        settings.PRESENCE_HEARTBEAT_HOLD = 1.0
        settings.PRESENCE_STORE_WARNING_INTERVAL = 60
        refs = [store.ConnRef(f"c{i}", i) for i in range(50)]
        writer = HotPathWriter()
        store_outage.recovered()  # no outage left open by an earlier test
        caplog.clear()  # nor its "back after" line (that call logs it)
        redis_server.kill()
        caplog.set_level(logging.WARNING)
        try:
            results = await asyncio.gather(
                *(writer.heartbeat(ref) for ref in refs), return_exceptions=True
            )
        finally:
            redis_server.start()
        await register(refs[:1])
        assert await writer.heartbeat(refs[0]) == store.HB_ALIVE

        assert len(results) == 50
        outage = [rec.getMessage() for rec in caplog.records if rec.name == "presence.store"]
        # One report when it started, one when it ended: not one per socket or per try.
        assert len(outage) == 2, outage
        assert outage[0].startswith("presence store unavailable for 0.0 s: 1 failures"), outage
        assert outage[1].startswith("presence store back after "), outage
        failures = int(outage[1].split("(")[1].split()[0])
        assert 2 <= failures < 50, outage  # counted per try of a batch, not per heartbeat
        assert not any(rec.exc_info for rec in caplog.records)


class TestActivity:
    """``activity`` frames move ``last_active`` through the heartbeat batch, throttled."""

    async def test_activity_rides_with_the_next_heartbeat(
        self,
        ws_client: WSFactory,
        auser_factory: UserFactory,
        r: redis.Redis,
        redis_log: CommandLog,
    ) -> None:
        client = await ws_client(await auser_factory("alice"))
        await client.request("heartbeat", id_="warm-up")
        uid = str(client.hello["user"]["id"])
        k = user_keys(uid)
        r.zadd(k.active, {uid: 1000})  # as if last active long ago
        redis_log.start()

        reply = await client.request("activity", id_="a")
        written_before_heartbeat = redis_log.r.zscore(k.active, uid)  # the log skips its own
        await client.request("heartbeat", id_=1)

        assert reply["data"] == {"recorded": True}
        assert written_before_heartbeat == 1000  # waited for the batch: no call of its own
        assert redis_log.names() == Counter({"EVALSHA": 1})
        assert abs((r.zscore(k.active, uid) or 0) - store.now_ms() / 1000) < 5

    async def test_throttled_per_resolution(
        self, ws_client: WSFactory, auser_factory: UserFactory, r: redis.Redis
    ) -> None:
        client = await ws_client(await auser_factory("alice"))
        other_tab = await ws_client(await auser_factory("bob"))

        first = await client.request("activity", id_=1)
        second = await client.request("activity", id_=2)
        bob = await other_tab.request("activity", id_=3)

        assert first["data"] == {"recorded": True}
        assert second["data"] == {"recorded": False}
        assert bob["data"] == {"recorded": True}  # per user, not per process

    async def test_without_an_id_there_is_no_reply(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        client = await ws_client(await auser_factory("alice"))

        await client.send({"type": "activity"})
        await client.send({"type": "heartbeat", "id": "after"})

        # The next frame is the heartbeat's ack: the activity had no answer.
        frame = await client.recv_until(lambda f: f["type"] != "presence")
        assert frame["id"] == "after"

    async def test_heartbeats_do_not_move_it(
        self, ws_client: WSFactory, auser_factory: UserFactory, r: redis.Redis
    ) -> None:
        client = await ws_client(await auser_factory("alice"))
        uid = str(client.hello["user"]["id"])
        k = user_keys(uid)
        assert r.zadd(k.active, {uid: 1000}, xx=True, ch=True) == 1  # the connect wrote it

        for i in range(3):
            await client.request("heartbeat", id_=i)

        assert r.zscore(k.active, uid) == 1000

    async def test_written_alone_when_no_heartbeat_comes(self, auser_factory: UserFactory) -> None:
        writer = HotPathWriter()
        assert writer.activity(7)
        writer._active[7] = 1234  # the time it was taken (deterministic for the check)

        await writer.flush()

        score = await store.get_async_redis().zscore(user_keys(7).active, "7")
        assert score == 1234
        assert writer._active == {}
