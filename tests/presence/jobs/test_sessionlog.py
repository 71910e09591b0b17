"""Session rows written behind from the event log (presence/jobs/sessionlog.py).

Real Redis (the stream and its consumer group), the real database, no mocks. Entries are
appended here in the format connect.lua and end.lua write (``open`` / ``close``), so these
tests pin the writer's side of that contract. A database outage is a real one: the
connection is pointed at a database that cannot be opened.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from asgiref.sync import SyncToAsync, sync_to_async
from django.db import connections
from pytest_django.fixtures import Settings

from config.embedded_redis import free_port
from presence import store
from presence.jobs import sessionlog
from sessions_app.models import ConnectionSession, EndReason

pytestmark = pytest.mark.django_db(transaction=True)

T0 = 1_790_000_000_000  # ms; an arbitrary fixed time


def at(ms: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ms / 1000, tz=dt.UTC)


class Log:
    """Appends entries to the event logs the way the Lua scripts do (``p`` chains them): a
    user's entries on the log of the user's home shard, others on their room's, through the
    store's client of that shard (every store shape; the writer follows every shard)."""

    def __init__(self, r: redis.Redis) -> None:
        self.r = r  # the suite's Redis (REDIS_URL): the task records

    @staticmethod
    def side(uid: int | str) -> tuple[redis.Redis, str]:
        """The client and the log of ``uid``'s home shard."""
        shard = store.user_home(uid)
        return store.client_for(shard), store.keys(shard).events

    def add(self, kind: str, **fields: Any) -> str:
        if "u" in fields:
            client, key = self.side(fields["u"])
        else:
            shard = store.room_home(str(fields.get("r", "")))
            client, key = store.client_for(shard), store.keys(shard).events
        last = client.xrevrange(key, count=1)
        prev = last[0][0] if last else "0-0"  # type: ignore[index]
        entry = {"k": kind, "p": prev, "t": str(fields.pop("t", T0))}
        entry.update({k: str(v) for k, v in fields.items()})
        return str(client.xadd(key, entry))  # type: ignore[arg-type]

    def open(
        self,
        user: Any,
        cid: str | None = None,
        *,
        t: int = T0,
        ip: str = "",
        ua: str = "agent/1",
        uid: int | None = None,
    ) -> str:
        cid = cid or str(uuid.uuid4())
        self.add(
            "open",
            t=t,
            c=cid,
            u=uid if uid is not None else user.pk,
            n=getattr(user, "username", "ghost"),
            ch=f"specific.test!{cid[:8]}",
            ip=ip,
            ua=ua,
        )
        return cid

    def close(
        self, cid: str, uid: int, *, why: str = "closed", at_ms: int = T0 + 5000, hb: str = ""
    ) -> str:
        return self.add("close", t=at_ms, c=cid, u=uid, why=why, at=at_ms, hb=hb)

    def pending(self) -> int:
        """Entries delivered to the writers' group and not acknowledged, over every shard."""
        return store.group_backlog(store.SESSION_LOG_GROUP)["pending"]

    def read_as(self, consumer: str, count: int = 100) -> list[str]:
        """Deliver new entries to ``consumer`` without acknowledging them (a writer dying)."""
        store.ensure_group(store.SESSION_LOG_GROUP)
        return [e.id for e in store.read_group(store.SESSION_LOG_GROUP, consumer, count=count)]


@pytest.fixture
def log(r: redis.Redis) -> Log:
    return Log(r)


def rows() -> dict[str, ConnectionSession]:
    return {str(s.id): s for s in ConnectionSession.objects.all()}


@contextmanager
def database_down() -> Iterator[None]:
    """Point this thread's connection at a database that cannot be opened, then restore it."""
    conn = connections["default"]
    saved = dict(conn.settings_dict)
    conn.close()
    if conn.vendor == "sqlite":
        conn.settings_dict["NAME"] = "/nonexistent/presence-tests/db.sqlite3"
    else:
        conn.settings_dict.update(HOST="127.0.0.1", PORT=str(free_port()))
    try:
        yield
    finally:
        conn.close()
        conn.settings_dict.clear()
        conn.settings_dict.update(saved)


# --------------------------------------------------------------------------- the fallback drain
class TestBulkWrite:
    def test_opens_and_closes(self, log: Log, user_factory: Callable[..., Any]) -> None:
        alice, bob = user_factory("alice"), user_factory("bob")
        a1 = log.open(alice, t=T0, ip="203.0.113.5", ua="A" * 600)
        a2 = log.open(alice, t=T0 + 1)
        b1 = log.open(bob, t=T0 + 2, ip="2001:db8::1")
        log.close(a1, alice.pk, why="kicked", at_ms=T0 + 9000, hb=str(T0 + 8000))
        log.close(b1, bob.pk, why="timeout", at_ms=T0 + 7000)

        report = sessionlog.drain_session_log()

        found = rows()
        assert set(found) == {a1, a2, b1}
        first = found[a1]
        assert (first.user_id, first.ip, first.user_agent) == (alice.pk, "203.0.113.5", "A" * 512)
        assert first.channel_name == f"specific.test!{a1[:8]}"
        assert first.connected_at == at(T0)
        assert (first.end_reason, first.ended_at, first.last_heartbeat_at) == (
            EndReason.KICKED,
            at(T0 + 9000),
            at(T0 + 8000),
        )
        assert (found[a2].ended_at, found[a2].end_reason, found[a2].ip) == (None, "", None)
        assert found[b1].ip == "2001:db8::1"
        assert (found[b1].end_reason, found[b1].last_heartbeat_at) == (EndReason.TIMEOUT, None)
        assert (report.opened, report.ended, report.entries, report.batches) == (3, 2, 5, 1)
        assert log.pending() == 0

    def test_one_batch_costs_a_constant_number_of_queries(
        self, log: Log, user_factory: Callable[..., Any], django_assert_max_num_queries: Any
    ) -> None:
        users = [user_factory() for _ in range(20)]
        cids = [log.open(users[i % 20]) for i in range(300)]
        for i, cid in enumerate(cids[:150]):
            log.close(cid, users[i % 20].pk, why=["closed", "timeout", "error"][i % 3])
        store.ensure_group(store.SESSION_LOG_GROUP)
        entries = store.read_group(store.SESSION_LOG_GROUP, "test", count=500)
        assert len(entries) == 450

        # BEGIN, the users, the INSERT (SQLite splits it in 3 of 100 rows), one UPDATE per
        # reason, the existence check, COMMIT: never a statement per entry.
        with django_assert_max_num_queries(12):
            applied = sessionlog.apply_entries(entries)

        assert (applied.opened, applied.ended, len(applied.done)) == (300, 150, 450)
        assert ConnectionSession.objects.count() == 300
        assert ConnectionSession.objects.live().count() == 150

    def test_other_kinds_are_skipped(self, log: Log, user_factory: Callable[..., Any]) -> None:
        alice = user_factory("alice")
        log.add("join", r="", u=alice.pk, n="alice", s="online")
        cid = log.open(alice)
        log.add("status", r="", u=alice.pk, n="alice", s="away")
        log.add("frame", r="lobby", d="{}")
        log.add("leave", r="", u=alice.pk, n="alice", s="offline", why="closed")

        report = sessionlog.drain_session_log()

        assert set(rows()) == {cid}
        assert (report.entries, report.opened, report.malformed) == (5, 1, 0)
        assert log.pending() == 0

    def test_malformed_entries_are_acknowledged(
        self, log: Log, user_factory: Callable[..., Any]
    ) -> None:
        alice = user_factory("alice")
        log.add("open", c="not-a-uuid", u=alice.pk)
        log.add("close", c=str(uuid.uuid4()), u=alice.pk, why="exploded", at=T0)
        log.open(alice, t=10**30)  # no datetime holds it
        log.open(alice, uid=2**64)  # no primary key column holds it
        good = log.open(alice, ip="not-an-ip")

        report = sessionlog.drain_session_log()

        assert report.malformed == 4
        assert rows()[good].ip is None  # recorded without the bogus address
        assert log.pending() == 0

    def test_users_deleted_meanwhile_are_skipped(
        self, log: Log, user_factory: Callable[..., Any]
    ) -> None:
        alice, gone = user_factory("alice"), user_factory("gone")
        kept = log.open(alice)
        lost = log.open(gone)
        log.close(lost, gone.pk)
        gone.delete()

        report = sessionlog.drain_session_log()

        assert set(rows()) == {kept}
        # Its close finds no row; nothing older is pending anywhere, so it is an orphan.
        assert (report.unknown_users, report.orphans) == (1, 1)
        assert log.pending() == 0


class TestAtLeastOnce:
    def test_the_same_entries_twice_change_nothing(
        self, log: Log, user_factory: Callable[..., Any]
    ) -> None:
        alice = user_factory("alice")
        cid = log.open(alice)
        log.close(cid, alice.pk, why="timeout", at_ms=T0 + 60_000)
        store.ensure_group(store.SESSION_LOG_GROUP)
        entries = store.read_group(store.SESSION_LOG_GROUP, "first", count=10)
        sessionlog.apply_entries(entries)
        before = rows()

        again = sessionlog.apply_entries(entries)  # a redelivery: the ack was lost

        assert again.ended == 0  # the first ending won
        assert again.missing == []
        assert rows()[cid].__dict__ | {"_state": None} == before[cid].__dict__ | {"_state": None}

    def test_a_later_ending_does_not_override_the_first(
        self, log: Log, user_factory: Callable[..., Any]
    ) -> None:
        alice = user_factory("alice")
        cid = log.open(alice)
        sessionlog.drain_session_log()
        log.close(cid, alice.pk, why="kicked", at_ms=T0 + 1000)
        log.close(cid, alice.pk, why="timeout", at_ms=T0 + 2000)

        sessionlog.drain_session_log()

        row = rows()[cid]
        assert (row.end_reason, row.ended_at) == (EndReason.KICKED, at(T0 + 1000))


class TestOrdering:
    def test_open_and_close_in_one_batch(self, log: Log, user_factory: Callable[..., Any]) -> None:
        alice = user_factory("alice")
        cid = log.open(alice)
        log.close(cid, alice.pk, why="error", at_ms=T0 + 10)

        report = sessionlog.drain_session_log()

        assert report.batches == 1
        assert rows()[cid].end_reason == EndReason.ERROR

    def test_close_in_a_later_batch_than_its_open(
        self, log: Log, user_factory: Callable[..., Any], settings: Settings
    ) -> None:
        settings.PRESENCE_SESSION_LOG_BATCH = 2
        alice = user_factory("alice")
        cids = [log.open(alice) for _ in range(3)]
        for cid in cids:
            log.close(cid, alice.pk)

        report = sessionlog.drain_session_log()

        assert report.batches == 3
        assert {r.end_reason for r in rows().values()} == {EndReason.CLOSED}
        assert len(rows()) == 3

    def test_close_waits_while_its_open_is_pending_elsewhere(
        self, log: Log, user_factory: Callable[..., Any], settings: Settings
    ) -> None:
        alice = user_factory("alice")
        cid = log.open(alice)
        log.read_as("web-dead")  # a writer read the open and died before writing it
        log.close(cid, alice.pk, why="timeout", at_ms=T0 + 60_000)

        first = sessionlog.drain_session_log()  # the open is not idle long enough to claim

        assert (first.deferred, first.orphans, first.claimed) == (1, 0, 0)
        assert rows() == {}
        assert log.pending() == 2  # the dead writer's open and our close: nothing lost

        settings.PRESENCE_SESSION_LOG_CLAIM_IDLE = 0.05
        time.sleep(0.1)
        second = sessionlog.drain_session_log()

        assert second.claimed == 2  # the open, and our own close (idle too)
        row = rows()[cid]
        assert (row.end_reason, row.ended_at) == (EndReason.TIMEOUT, at(T0 + 60_000))
        assert log.pending() == 0

    def test_close_without_any_open_is_an_orphan(
        self, log: Log, user_factory: Callable[..., Any]
    ) -> None:
        alice = user_factory("alice")
        log.close(str(uuid.uuid4()), alice.pk)

        report = sessionlog.drain_session_log()

        assert (report.orphans, report.deferred) == (1, 0)
        assert log.pending() == 0


class TestTakeOver:
    def test_entries_of_a_dead_writer_are_claimed(
        self, log: Log, user_factory: Callable[..., Any], settings: Settings
    ) -> None:
        # The idle limit is lowered between the drains instead of slept past: under load the
        # early drain alone may come later than any short limit.
        settings.PRESENCE_SESSION_LOG_CLAIM_IDLE = 60
        alice = user_factory("alice")
        cids = [log.open(alice) for _ in range(3)]
        log.close(cids[0], alice.pk)
        assert len(log.read_as("web-dead")) == 4
        newer = log.open(alice)

        early = sessionlog.drain_session_log()  # too early to take over

        assert set(rows()) == {newer}
        assert early.claimed == 0
        time.sleep(0.05)
        settings.PRESENCE_SESSION_LOG_CLAIM_IDLE = 0.01

        late = sessionlog.drain_session_log()

        assert late.claimed == 4
        assert set(rows()) == {*cids, newer}
        assert rows()[cids[0]].end_reason == EndReason.CLOSED
        assert log.pending() == 0

    def test_trimmed_entries_are_acknowledged_and_counted(
        self, log: Log, user_factory: Callable[..., Any], settings: Settings
    ) -> None:
        settings.PRESENCE_SESSION_LOG_CLAIM_IDLE = 0
        alice = user_factory("alice")
        lost = [log.open(alice) for _ in range(3)]
        log.read_as("web-dead")
        kept = log.open(alice)
        client, key = log.side(alice.pk)
        client.xtrim(key, maxlen=1, approximate=False)  # only the last open survives

        report = sessionlog.drain_session_log()

        assert report.trimmed == 3
        assert set(rows()) == {kept}  # the trimmed ones are lost: the documented limit
        assert not set(lost) & set(rows())
        assert log.pending() == 0

    def test_idle_consumers_holding_nothing_are_forgotten(self, log: Log) -> None:
        store.ensure_group(store.SESSION_LOG_GROUP)
        client, key = log.side(1)
        for name in ("web-gone", "web-busy"):
            client.xgroup_createconsumer(key, store.SESSION_LOG_GROUP, name)
        log.open(None, uid=1)
        log.read_as("web-busy")  # holds one entry

        removed = store.prune_consumers(store.SESSION_LOG_GROUP, idle_ms=0, keep="celery")

        names = {c["name"] for c in client.xinfo_consumers(key, store.SESSION_LOG_GROUP)}  # type: ignore[union-attr]
        assert removed == 1
        assert names == {"web-busy"}


class TestBacklog:
    def test_undelivered_and_pending_entries_are_counted(
        self, log: Log, user_factory: Callable[..., Any]
    ) -> None:
        alice = user_factory("alice")
        assert store.group_backlog(store.SESSION_LOG_GROUP) == {
            "pending": 0,
            "undelivered": 0,
        }
        log.open(alice)
        log.read_as("web-dead")
        log.open(alice), log.open(alice)

        assert store.group_backlog(store.SESSION_LOG_GROUP) == {
            "pending": 1,
            "undelivered": 2,
        }


class TestDatabaseOutage:
    def test_entries_stay_pending_and_are_written_later(
        self, log: Log, user_factory: Callable[..., Any]
    ) -> None:
        alice = user_factory("alice")
        cid = log.open(alice)
        log.close(cid, alice.pk, why="timeout")

        with database_down():
            failed = sessionlog.drain_session_log()

        assert failed.error.startswith("database")
        assert log.pending() == 2  # read by the fallback, not acknowledged
        assert rows() == {}

        report = sessionlog.drain_session_log()  # the same consumer retries its own at once

        assert rows()[cid].end_reason == EndReason.TIMEOUT
        assert report.entries == 2
        assert log.pending() == 0

    def test_the_locked_task_records_its_run(
        self, log: Log, user_factory: Callable[..., Any]
    ) -> None:
        log.open(user_factory("alice"))

        report = sessionlog.write_sessions()

        assert (report.opened, report.skipped) == (1, False)
        last = store.read_task_run(log.r, sessionlog.TASK)
        assert (last["last_opened"], last["runs_total"], last["opened_total"]) == ("1", "1", "1")


# --------------------------------------------------------------------------- the web writer
async def wait_for(check: Callable[[], Any], within: float = 5.0) -> Any:
    """Poll ``check`` (sync, run in the ORM thread) until it returns something truthy."""
    deadline = time.monotonic() + within
    while True:
        value = await sync_to_async(check)()
        if value or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.02)


def _break_in_orm_thread(down: bool, saved: dict[str, Any]) -> None:
    conn = connections["default"]
    conn.close()
    if down:
        saved.update(conn.settings_dict)
        conn.settings_dict["NAME"] = "/nonexistent/presence-tests/db.sqlite3"
    else:
        conn.settings_dict.clear()
        conn.settings_dict.update(saved)


def orm_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run ``fn`` in the thread that runs database_sync_to_async calls of this event loop."""
    return SyncToAsync.single_thread_executor.submit(fn, *args).result(timeout=10)


class TestSessionWriter:
    @pytest.mark.serial  # measures the write-behind's latency: other processes would distort it
    async def test_rows_appear_within_a_second(
        self, log: Log, auser_factory: Callable[..., Any]
    ) -> None:
        alice = await auser_factory("alice")
        writer = await sessionlog.ensure_session_writer()
        assert await sessionlog.ensure_session_writer() is writer  # one per event loop

        started = time.monotonic()
        cid = log.open(alice)
        assert await wait_for(lambda: ConnectionSession.objects.filter(pk=cid).exists())
        assert time.monotonic() - started < 1.0
        log.close(cid, alice.pk, why="closed")
        assert await wait_for(lambda: ConnectionSession.objects.get(pk=cid).ended_at)
        assert await wait_for(lambda: log.pending() == 0)

    async def test_entries_arriving_during_a_write_form_one_batch(
        self, log: Log, auser_factory: Callable[..., Any]
    ) -> None:
        alice = await auser_factory("alice")
        writer = await sessionlog.ensure_session_writer()
        for _ in range(200):
            log.open(alice)

        assert await wait_for(lambda: ConnectionSession.objects.count() == 200)
        assert writer.report.batches < 20  # batches, not one write per entry

    async def test_dead_writers_entries_are_taken_over(
        self, log: Log, auser_factory: Callable[..., Any], settings: Settings
    ) -> None:
        settings.PRESENCE_SESSION_LOG_CLAIM_IDLE = 0.3
        alice = await auser_factory("alice")
        cid = log.open(alice)
        log.read_as("web-dead")
        log.close(cid, alice.pk, why="kicked")

        writer = await sessionlog.ensure_session_writer()

        row = await wait_for(
            lambda: ConnectionSession.objects.filter(pk=cid, ended_at__isnull=False).first()
        )
        assert row.end_reason == EndReason.KICKED
        assert writer.report.claimed >= 1
        assert await wait_for(lambda: log.pending() == 0)

    @pytest.mark.single_only(
        reason="kills the suite's one Redis: on the cluster and shards shapes the logs are "
        "on other servers, which stay up"
    )
    async def test_survives_a_redis_restart(
        self, log: Log, auser_factory: Callable[..., Any], redis_server: Any
    ) -> None:
        alice = await auser_factory("alice")
        writer = await sessionlog.ensure_session_writer()
        first = log.open(alice)
        assert await wait_for(lambda: ConnectionSession.objects.filter(pk=first).exists())

        redis_server.kill()
        await asyncio.sleep(0.5)  # the writer's reads fail meanwhile
        redis_server.start()  # empty: stream and group are gone
        assert writer.failing
        second = log.open(alice)

        assert await wait_for(lambda: ConnectionSession.objects.filter(pk=second).exists())
        assert not writer.task.done()  # type: ignore[union-attr]

    async def test_survives_a_database_outage(
        self, log: Log, auser_factory: Callable[..., Any]
    ) -> None:
        alice = await auser_factory("alice")
        writer = await sessionlog.ensure_session_writer()
        saved: dict[str, Any] = {}
        await asyncio.to_thread(orm_thread, _break_in_orm_thread, True, saved)
        try:
            cid = log.open(alice)
            await asyncio.sleep(1.0)
            assert writer.failing
            assert log.pending() == 1  # read, kept for the retry
        finally:
            await asyncio.to_thread(orm_thread, _break_in_orm_thread, False, saved)

        assert await wait_for(lambda: ConnectionSession.objects.filter(pk=cid).exists(), 8)
        assert await wait_for(lambda: log.pending() == 0)
        assert not writer.task.done()  # type: ignore[union-attr]
