"""The periodic tasks executed by real Celery processes against the real broker.

Tasks are sent with ``.delay()`` (or scheduled by ``celery beat``) and run by a
``celery worker`` subprocess; the tests wait for their effects in Redis and the database.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from presence import store
from presence.live.fanout import GLOBAL
from presence.models import FlushRecord, StatsBucket
from presence.tasks import flush_stats, sweep_expired
from sessions_app.models import ConnectionSession, EndReason
from tests.presence.jobs.test_flush_faults import bump, database_totals, expected, state
from tests.presence.jobs.test_sweep import drain, leaves, listen
from tests.support.homes import every_shard, stat_total, user_keys

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

# An SQLite path that cannot be opened: the database is "down" for that process.
NO_DATABASE = {"DATABASE_URL": "sqlite:////nonexistent-dir/presence/db.sqlite3"}


async def until(
    check: Callable[[], Any],
    within: float = 15,
    what: str = "",
    show: Callable[[], Any] | None = None,
) -> Any:
    """Poll ``check`` (sync; run in a thread so it may use the ORM) until it is truthy.

    ``show`` (sync) says what was there instead, in the failure's message."""
    deadline = time.monotonic() + within
    while True:
        value = await sync_to_async(check)()
        if value:
            return value
        if time.monotonic() > deadline:
            seen = f": {await sync_to_async(show)()}" if show else ""
            raise AssertionError(f"timed out waiting for {what or check}{seen}")
        await asyncio.sleep(0.05)


def succeeded(worker: Any, task: str) -> int:
    """Tasks named ``task`` the worker ran to completion, from its log."""
    return len(re.findall(rf"Task {re.escape(task)}\[[0-9a-f-]+\] succeeded in", worker.text()))


def task_runs(r: Any, task: str) -> int:
    """Runs of ``task`` that are accounted for: completed and skipped."""
    metrics = store.read_task_run(r, task)
    return int(metrics.get("runs_total", 0)) + int(metrics.get("skipped_total", 0))


class TestSweepWorker:
    async def test_n_sweeps_at_once_end_each_connection_once(
        self, r, auser_factory, seed_connections, celery_worker_process
    ):
        n_tasks = 8
        worker = celery_worker_process(concurrency=4, env={"PRESENCE_SWEEP_BATCH_SIZE": "10"})
        users = [await auser_factory() for _ in range(30)]
        watcher = await listen(GLOBAL, "lobby")
        conns = await seed_connections(users, per_user=4, age=120, rooms=("lobby",))

        for _ in range(n_tasks):
            sweep_expired.delay()
        await until(lambda: task_runs(r, "sweep") == n_tasks, what="all sweep tasks")

        ended = ConnectionSession.objects.filter(end_reason=EndReason.TIMEOUT)
        assert await ended.acount() == len(conns)
        assert stat_total(r, "disconnects") == len(conns)
        metrics = store.read_task_run(r, "sweep")
        assert int(metrics["ended_total"]) == len(conns)
        expected_leaves = sorted([(u.pk, "") for u in users] + [(u.pk, "lobby") for u in users])
        assert leaves(await drain(watcher)) == expected_leaves
        # Every task the worker ran is accounted for: none was skipped silently. (A run is
        # recorded in Redis before the worker logs the task's success: the last log line
        # may come a moment after the count.)
        await until(
            lambda: succeeded(worker, "presence.sweep_expired") == n_tasks,
            what="every sweep task logged as succeeded",
        )

    async def test_two_beats_still_end_each_connection_once(
        self, r, auser_factory, seed_connections, celery_worker_process
    ):
        fast = {"PRESENCE_SWEEP_INTERVAL": "0.3", "STATS_FLUSH_INTERVAL": "60"}
        worker = celery_worker_process(concurrency=2, env=fast)
        users = [await auser_factory() for _ in range(10)]
        watcher = await listen(GLOBAL)
        # Seeded before any sweep runs: a sweep between a user's first and second seeded
        # connection would rightly log a leave, then a join and a second leave.
        conns = await seed_connections(users, per_user=3, age=120)
        beats = [celery_worker_process(env=fast, beat=True) for _ in range(2)]  # one by mistake

        await until(lambda: store.read_task_run(r, "sweep").get("ended_total") == str(len(conns)))
        await asyncio.sleep(1.0)  # more periods of both beats
        for beat in beats:
            beat.stop()
        await asyncio.sleep(0.5)  # the worker finishes what it received

        assert await ConnectionSession.objects.filter(ended_at__isnull=False).acount() == 30
        assert stat_total(r, "disconnects") == len(conns)
        assert leaves(await drain(watcher)) == sorted((u.pk, "") for u in users)
        executed = succeeded(worker, "presence.sweep_expired")
        assert executed >= 6  # both beats kept sending
        assert task_runs(r, "sweep") == executed  # each run counted, as run or as skipped

    async def test_database_down_events_now_sessions_later(
        self, r, auser_factory, seed_connections, celery_worker_process
    ):
        down = celery_worker_process(
            pool="solo", env={**NO_DATABASE, "PRESENCE_SWEEP_CLAIM_TIMEOUT": "1"}
        )
        alice = await auser_factory("alice")
        watcher = await listen(GLOBAL)
        conns = await seed_connections([alice], per_user=2, age=120)

        sweep_expired.delay()
        await until(lambda: task_runs(r, "sweep") == 1)

        # Redis is the truth about presence: alice is gone and everyone was told.
        assert "database" in store.read_task_run(r, "sweep")["last_error"]
        assert leaves(await drain(watcher)) == [(alice.pk, "")]
        assert store.user_presence(alice.pk) == (None, 0)
        assert await ConnectionSession.objects.filter(ended_at__isnull=True).acount() == 2
        # Claims kept for the retry, on alice's shard (where her connections are).
        assert r.zcard(user_keys(alice.pk).sweeping) == 2

        down.stop()
        celery_worker_process(pool="solo")
        await asyncio.sleep(1.0)  # the dead run's claims lapse
        sweep_expired.delay()
        await until(lambda: task_runs(r, "sweep") == 2)

        for conn in conns:
            row = await ConnectionSession.objects.aget(pk=conn.cid)
            assert row.end_reason == EndReason.TIMEOUT
        assert [k.shard for k in every_shard() if r.zcard(k.sweeping)] == []
        assert leaves(await drain(watcher)) == []  # not announced twice
        last = store.read_task_run(r, "sweep")
        assert (last["last_reclaimed"], last["last_sessions_ended"]) == ("2", "2")


class TestFlushWorker:
    async def test_beat_and_worker_flush_counters_and_heartbeats(
        self, r, auser_factory, seed_connections, celery_worker_process
    ):
        fast = {"STATS_FLUSH_INTERVAL": "0.5", "PRESENCE_SWEEP_INTERVAL": "60"}
        celery_worker_process(env=fast)
        celery_worker_process(env=fast, beat=True)
        live = await seed_connections([await auser_factory()], per_user=2, age=5)
        made: Counter[str] = Counter({"connects": 2})
        for i in range(3):
            await bump(made, i)
            await asyncio.sleep(0.3)

        # A bound for a busy machine (a worker and a beat starting beside other tests): the
        # totals must still match exactly.
        await until(
            lambda: database_totals() == expected(made),
            within=45,
            what=f"flushed totals {dict(expected(made))}",
            show=lambda: (dict(database_totals()), state(r), task_runs(r, "flush")),
        )

        for conn in live:
            row = await ConnectionSession.objects.aget(pk=conn.cid)
            assert row.last_heartbeat_at is not None
        assert await FlushRecord.objects.acount() >= 1
        # The peak of the two live connections is in the bucket of the minute it was seen:
        # a run across a minute boundary has two buckets, and afirst() may be the other one.
        peaks = [bucket.peak_connections async for bucket in StatsBucket.objects.all()]
        assert max(peaks) == 2, peaks

    async def test_database_down_counters_wait_in_redis(self, r, celery_worker_process):
        down = celery_worker_process(pool="solo", env=NO_DATABASE)
        made: Counter[str] = Counter()
        # Counters added without a connection ride on shard 0's stats hash (the first section
        # of an empty heartbeat batch: presence/store/connections.py), so its claims are there.
        k = store.keys(0)

        await bump(made, 0)
        flush_stats.delay()
        await until(lambda: task_runs(r, "flush") == 1)
        assert "database" in store.read_task_run(r, "flush")["last_error"]
        assert r.zcard(k.stats_claims) == 1  # claimed, not applied: it waits

        await bump(made, 1)
        flush_stats.delay()
        await until(lambda: task_runs(r, "flush") == 2)
        # Still one claim: the run stopped at the leftover; new counts stay in the live hash.
        assert r.zcard(k.stats_claims) == 1
        assert int(r.hget(k.stats, "connects")) == 2
        assert not await sync_to_async(database_totals)()

        down.stop()
        celery_worker_process(pool="solo")
        flush_stats.delay()
        await until(lambda: task_runs(r, "flush") == 3)

        assert await sync_to_async(database_totals)() == expected(made)
        assert r.zcard(k.stats_claims) == 0 and r.exists(k.stats) == 0
        assert await FlushRecord.objects.acount() == 2
