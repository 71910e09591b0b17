"""The event log's long-running readers (presence/jobs/consumers.py, ``presence_consume``).

In-process readers run in a thread against the real Redis and database; the fault tests run
real ``manage.py presence_consume`` processes and kill them (SIGKILL mid-batch, SIGTERM),
or restart the Redis under them. No mocks.
"""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from django.db import connection, transaction
from pytest_django.fixtures import Settings

from config.embedded_redis import RedisServer
from presence import store
from presence.hooks import readers
from presence.jobs import consumers, sessionlog
from presence.models import WebhookEndpoint
from sessions_app.models import ConnectionSession
from tests.support.consume import ConsumeProcess
from tests.support.hook_log import Log as HookLog
from tests.support.webhook_receiver import Receiver

pytestmark = pytest.mark.django_db(transaction=True)

T0 = 1_790_000_000_000
FAST = {"PRESENCE_SESSION_LOG_CLAIM_IDLE": "1"}


def add_open(r: Any, uid: int) -> str:
    """An ``open`` entry as connect.lua writes it; returns the connection id."""
    cid = str(uuid.uuid4())
    fields = {"k": "open", "t": str(T0), "c": cid, "u": str(uid), "n": "u", "ch": "ch"}
    r.xadd(store.keys().events, fields)
    return cid


def add_opens(r: redis.Redis, uid: int, n: int) -> list[str]:
    """``n`` opens in one transaction: a reader blocked on the log gets them as one batch."""
    pipe = r.pipeline(transaction=True)
    cids = [add_open(pipe, uid) for _ in range(n)]
    pipe.execute()
    return cids


def wait_until(check: Callable[[], Any], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"not within {within} s: {what}"
        time.sleep(0.05)


def pending_of(r: redis.Redis, group: str) -> dict[str, int]:
    """Pending entries per consumer of ``group``."""
    try:
        raw: Any = r.xpending(store.keys().events, group)
    except redis.ResponseError:
        return {}
    return {str(c["name"]): int(c["pending"]) for c in raw["consumers"] or []}


def job_totals(r: redis.Redis, job: str) -> dict[str, str]:
    return dict(r.hgetall(store.keys().task_last(job)))  # type: ignore[arg-type]


@contextmanager
def sessions_table_locked() -> Iterator[None]:
    """Hold a lock that makes every session write wait (a writer stuck mid-batch)."""
    if connection.vendor == "sqlite":
        db = sqlite3.connect(str(connection.settings_dict["NAME"]), isolation_level=None)
        db.execute("BEGIN EXCLUSIVE")
        try:
            yield
        finally:
            db.execute("ROLLBACK")
            db.close()
        return
    table = ConnectionSession._meta.db_table
    with transaction.atomic(), connection.cursor() as cursor:
        cursor.execute(f"LOCK TABLE {table} IN ACCESS EXCLUSIVE MODE")
        yield


@contextmanager
def running(handler: consumers.Handler, name: str = "") -> Iterator[threading.Thread]:
    """One reader of ``handler`` in a thread, stopped (and checked stopped) at the end."""
    stopping = threading.Event()
    reader = consumers.LogConsumer(handler, stopping, name=name or f"test-{handler.job}")
    thread = threading.Thread(target=reader.run, daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        stopping.set()
        thread.join(5)
        assert not thread.is_alive(), "the reader did not stop within 5 s"


# --------------------------------------------------------------------------- in process
class TestInProcess:
    def test_session_rows_written_as_entries_arrive(
        self, r: redis.Redis, user_factory: Any
    ) -> None:
        alice = user_factory("alice")
        with running(sessionlog.SessionHandler()):
            time.sleep(0.3)  # the reader is blocked on its group now
            cids = [add_open(r, alice.pk) for _ in range(3)]
            wait_until(
                lambda: ConnectionSession.objects.filter(pk__in=cids).count() == 3,
                5,
                "three rows",
            )
            # The run is recorded after the rows' commit: wait for it before the reader stops.
            wait_until(
                lambda: job_totals(r, "sessionlog").get("entries_total") == "3",
                5,
                "the run's record",
            )
        assert pending_of(r, store.SESSION_LOG_GROUP) == {}
        totals = job_totals(r, "sessionlog")
        assert int(totals["entries_total"]) == 3
        assert totals["last_success_at_ms"]

    @pytest.mark.serial  # measures the POST's latency: other processes would distort it
    def test_a_lone_webhook_event_is_posted_at_once(
        self, r: redis.Redis, settings: Settings
    ) -> None:
        # The receiver is on loopback: a deliberate internal receiver (docs/hooks.md).
        settings.PRESENCE_WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
        receiver = Receiver()
        try:
            WebhookEndpoint.objects.create(name="ep", url=receiver.url, secret="s")
            stopping = threading.Event()
            with running(readers.WebhookHandler(stopping)):
                time.sleep(0.3)
                HookLog(r).join(7)
                started = time.monotonic()
                assert receiver.arrived.wait(5), "no POST"
                took = time.monotonic() - started
            stopping.set()
            # The old router held a lone event for PRESENCE_WEBHOOK_BATCH_WINDOW (1 s) plus a
            # beat tick; now it is routed and POSTed as soon as it is read.
            assert took < 0.9, took
            assert [e["type"] for e in receiver.requests[0].events] == ["user.online"]
        finally:
            receiver.stop()

    def test_only_one_reader_of_an_exclusive_group_at_a_time(self, r: redis.Redis) -> None:
        from presence.hooks.readers import SignalHandler

        with running(SignalHandler(), name="a"), running(SignalHandler(), name="b"):
            HookLog(r).join(1)
            wait_until(lambda: job_totals(r, "hooks").get("entries_total"), 5, "sent")
            readers_seen = {
                str(c["name"])
                for c in r.xinfo_consumers(store.keys().events, store.HOOKS_GROUP)  # type: ignore[union-attr]
            }
        # The standby never read the group: it waited for the lease.
        assert len(readers_seen) == 1, readers_seen


# --------------------------------------------------------------------------- processes
@pytest.mark.slow
@pytest.mark.timeout(120)
class TestProcesses:
    def test_sigkill_mid_batch_entries_are_taken_over_and_written_once(
        self,
        r: redis.Redis,
        user_factory: Any,
        consume_process: Callable[..., ConsumeProcess],
    ) -> None:
        alice = user_factory("alice")
        first = consume_process(env=FAST, only="sessionlog")
        name = first.consumer("sessionlog")
        with sessions_table_locked():
            cids = add_opens(r, alice.pk, 20)
            # The first reader read all 20 and is stuck writing them: kill it there.
            wait_until(
                lambda: pending_of(r, store.SESSION_LOG_GROUP).get(name) == 20,
                10,
                "the first reader holding 20 entries",
            )
            first.kill()
        assert ConnectionSession.objects.count() == 0
        second = consume_process(env=FAST, only="sessionlog")
        wait_until(
            lambda: ConnectionSession.objects.filter(pk__in=cids).count() == 20, 20, "20 rows"
        )
        wait_until(lambda: not pending_of(r, store.SESSION_LOG_GROUP), 10, "nothing pending")
        second.wait_for_log("took over 20 entries")
        # Handled once: the dead reader recorded nothing of the batch, the second each once.
        wait_until(
            lambda: job_totals(r, "sessionlog").get("entries_total") == "20", 5, "20 handled"
        )
        time.sleep(1.5)  # a second handling would show up in the next record
        assert job_totals(r, "sessionlog")["entries_total"] == "20"

    def test_redis_restarted_under_a_running_consumer_it_resumes(
        self,
        r: redis.Redis,
        redis_server: RedisServer,
        user_factory: Any,
        consume_process: Callable[..., ConsumeProcess],
    ) -> None:
        alice = user_factory("alice")
        proc = consume_process(env=FAST)
        before = add_open(r, alice.pk)
        wait_until(lambda: ConnectionSession.objects.filter(pk=before).exists(), 10, "first row")
        redis_server.restart()  # everything in it is lost, the group included
        time.sleep(1.0)
        after = add_open(r, alice.pk)
        wait_until(lambda: ConnectionSession.objects.filter(pk=after).exists(), 20, "row after")
        assert proc.proc.poll() is None

    def test_sigterm_stops_it_cleanly_within_5_seconds(
        self, r: redis.Redis, consume_process: Callable[..., ConsumeProcess]
    ) -> None:
        proc = consume_process()
        wait_until(lambda: job_totals(r, "webhooks").get("last_success_at_ms"), 10, "reading")
        started = time.monotonic()
        proc.terminate()
        rc = proc.proc.wait(timeout=10)
        took = time.monotonic() - started
        assert rc == 0, proc.text()
        assert took < 5.0, took
        assert "consume: stopped" in proc.text()
        # Its leases are released: a standby takes over at once, not after they lapse.
        assert not r.exists(store.keys().task_lock("consumer-hooks"))
