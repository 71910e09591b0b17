"""The process registry and the ghost reconciliation, against the private Redis."""

from __future__ import annotations

import asyncio
import os
import socket
import time
import uuid
from typing import Any

import pytest

from presence import store
from presence.jobs import reconcile
from presence.jobs.reconcile import run_reconcile
from presence.live import processes
from presence.live.processes import LocalProcess, list_processes


async def connect(cid: str, *, age: float = 0.0, uid: int = 1) -> None:
    """A connection registered in Redis as if it connected ``age`` seconds ago (still live)."""
    await store.connect(
        cid=cid,
        uid=uid,
        username=f"u{uid}",
        channel=f"specific.test!{cid}",
        now=store.now_ms() - int(age * 1000),
    )


async def wait_for(pred: Any, within: float = 5.0) -> None:
    """Poll ``pred()`` until true; fail after ``within`` seconds."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if pred():
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"not true after {within} s")


def held_in_redis(r: Any, proc: LocalProcess) -> set[str]:
    return set(r.smembers(store.control_keys().proc_conns(proc.id)))


class TestRecord:
    async def test_published_record_is_listed_with_its_fields(self, r: Any, settings: Any) -> None:
        settings.PRESENCE_VERSION = "1.2.3"
        proc = LocalProcess()
        proc.track_open("a")
        proc.track_open("b")
        await proc.publish()
        (rec,) = list_processes()
        assert rec["id"] == proc.id
        assert rec["host"] == socket.gethostname()
        assert rec["pid"] == os.getpid()
        assert rec["version"] == "1.2.3"
        assert rec["sockets"] == 2
        assert rec["rss_bytes"] > 1_000_000  # a Python process with Django loaded
        assert abs(rec["started_at"] - proc.started_at) < 0.01
        assert abs(rec["last_seen"] - time.time()) < 5
        assert held_in_redis(r, proc) == {"a", "b"}

    async def test_changes_are_sent_as_a_delta(self, r: Any) -> None:
        proc = LocalProcess()
        for cid in ("a", "b", "c"):
            proc.track_open(cid)
        await proc.publish()
        proc.track_close("a")
        proc.track_open("d")
        proc.track_open("e")
        proc.track_close("e")  # opened and closed between two refreshes: never sent
        assert proc.added == {"d"} and proc.removed == {"a"}
        await proc.publish()
        assert held_in_redis(r, proc) == {"b", "c", "d"}
        assert list_processes()[0]["sockets"] == 3

    async def test_a_set_lost_in_redis_is_rewritten(self, r: Any) -> None:
        proc = LocalProcess()
        proc.track_open("a")
        proc.track_open("b")
        await proc.publish()
        r.flushall()  # as after a Redis restart without persistence
        proc.track_open("c")
        await proc.publish()
        assert held_in_redis(r, proc) == {"a", "b", "c"}
        assert not proc.rewrite

    async def test_record_expires_when_not_refreshed(self, r: Any, settings: Any) -> None:
        settings.PRESENCE_PROCESS_REFRESH = 0.5  # TTL: max(3 x 0.5, 2) = 2 s
        proc = LocalProcess()
        proc.track_open("a")
        await proc.publish()
        assert [p["id"] for p in list_processes()] == [proc.id]
        await asyncio.sleep(2.2)
        assert list_processes() == []
        assert held_in_redis(r, proc) == set()

    async def test_two_processes_are_listed_and_the_index_forgets_expired_ones(
        self, r: Any, settings: Any
    ) -> None:
        settings.PRESENCE_PROCESS_REFRESH = 0.5
        first, second = LocalProcess(), LocalProcess()
        await first.publish()
        await second.publish()
        assert {p["id"] for p in list_processes()} == {first.id, second.id}
        await asyncio.sleep(2.2)
        await second.publish()
        assert [p["id"] for p in list_processes()] == [second.id]
        assert r.zrange(store.control_keys().procs, 0, -1) == [second.id]  # pruned by the refresh

    async def test_ids_differ_for_the_same_pid(self) -> None:
        assert LocalProcess().id != LocalProcess().id


class TestRefreshTask:
    @pytest.mark.serial  # measures the event loop's lag: other processes would distort it
    async def test_task_publishes_and_measures_loop_lag(self, r: Any, settings: Any) -> None:
        settings.PRESENCE_PROCESS_REFRESH = 0.3
        proc = LocalProcess()
        proc.start(asyncio.get_running_loop())
        try:
            await wait_for(list_processes)
            assert list_processes()[0]["loop_lag_seconds"] < 0.2
            # A stall starting anywhere in a probe tick delays its timer by 0.25-0.5 s.
            time.sleep(0.5)  # noqa: ASYNC251 - the stall being measured
            await wait_for(lambda: list_processes()[0]["loop_lag_seconds"] >= 0.24)
            assert list_processes()[0]["asyncio_tasks"] >= 2  # this test and the refresher
        finally:
            assert proc.task is not None
            proc.task.cancel()

    async def test_ensure_started_is_idempotent_per_loop(self) -> None:
        processes.ensure_started()
        task = processes.local().task
        processes.ensure_started()
        assert processes.local().task is task
        assert task is not None and not task.done()

    async def test_publish_failure_is_survived(self, r: Any, redis_server: Any, settings: Any):
        settings.PRESENCE_PROCESS_REFRESH = 0.2
        proc = LocalProcess()
        proc.track_open("a")
        proc.start(asyncio.get_running_loop())
        try:
            redis_server.kill()
            await asyncio.sleep(0.6)
            assert proc.failing and proc.task is not None and not proc.task.done()
            redis_server.start()
            store.reset_clients()
            await wait_for(list_processes)
            assert held_in_redis(r, proc) == {"a"}
        finally:
            if redis_server.process.poll() is not None:  # not by PING: see _clean_redis
                redis_server.start()
            assert proc.task is not None
            proc.task.cancel()


class TestGhosts:
    async def test_connections_no_live_process_holds_are_ghosts(self, r: Any) -> None:
        held, lost = str(uuid.uuid4()), str(uuid.uuid4())
        await connect(held, age=5)
        await connect(lost, age=5, uid=2)
        proc = LocalProcess()
        proc.track_open(held)
        await proc.publish()
        report = run_reconcile()
        assert (report.processes, report.scanned, report.ghosts) == (1, 2, 1)
        assert report.ghost_sample == lost

    async def test_a_crashed_process_leaves_its_connections_as_ghosts(self, r: Any) -> None:
        cids = [str(uuid.uuid4()) for _ in range(3)]
        proc = LocalProcess()
        for i, cid in enumerate(cids):
            await connect(cid, age=5, uid=i + 1)
            proc.track_open(cid)
        await proc.publish()
        assert run_reconcile().ghosts == 0
        store.remove_process(store.get_redis(), proc.id)  # what its record's expiry does
        assert run_reconcile().ghosts == 3

    async def test_a_connection_newer_than_the_last_refresh_is_not_a_ghost_yet(
        self, r: Any
    ) -> None:
        proc = LocalProcess()
        await proc.publish()
        await connect(str(uuid.uuid4()))  # its process may not have published it yet
        assert run_reconcile().ghosts == 0

    async def test_expired_connections_are_not_ghosts(self, r: Any) -> None:
        await connect(str(uuid.uuid4()), age=3600)  # lapsed: the sweep's business
        report = run_reconcile()
        assert (report.scanned, report.ghosts) == (0, 0)

    async def test_pages_and_many_processes(self, r: Any, monkeypatch: Any) -> None:
        monkeypatch.setattr(reconcile, "RECONCILE_PAGE", 7)
        procs = [LocalProcess() for _ in range(3)]
        cids = [str(uuid.uuid4()) for _ in range(300)]
        for i, cid in enumerate(cids):
            await connect(cid, age=5, uid=i + 1)
            if i % 10:  # every tenth is held by nobody
                procs[i % 3].track_open(cid)
        for proc in procs:
            await proc.publish()
        report = run_reconcile()
        assert (report.scanned, report.ghosts) == (300, 30)

    async def test_every_shards_connections_are_looked_at(self, r: Any) -> None:
        # Users on their own shards: the run reads every shard's index.
        proc = LocalProcess()
        cids = {uid: str(uuid.uuid4()) for uid in range(1, 21)}
        for uid, cid in cids.items():
            await connect(cid, age=5, uid=uid)
            if uid % 2:
                proc.track_open(cid)
        await proc.publish()
        assert len({store.user_home(uid) for uid in cids}) > 10  # spread over many shards

        report = run_reconcile()

        assert (report.scanned, report.ghosts) == (20, 10)

    async def test_the_task_records_the_count_for_metrics(self, r: Any) -> None:
        await connect(str(uuid.uuid4()), age=5)
        report = reconcile.reconcile_connections()
        assert report.ghosts == 1
        last = store.read_task_run(store.get_redis(), "reconcile")
        assert last["last_ghosts"] == "1"
        assert last["ghosts_found_total"] == "1"


@pytest.mark.parametrize("refresh,ttl", [(5.0, 15000), (0.1, 2000)])
def test_record_ttl(settings: Any, refresh: float, ttl: int) -> None:
    settings.PRESENCE_PROCESS_REFRESH = refresh
    assert processes.record_ttl_ms() == ttl


class TestLastRuns:
    def test_last_runs_of_every_task(self, r: Any) -> None:
        from presence.jobs import periodic

        assert periodic.last_runs()["sweep"]["last_finished_at"] is None  # never ran
        report = periodic.run_locked("sweep", 1000, periodic.RunReport(), lambda rep: None)
        assert not report.skipped
        runs = periodic.last_runs()
        assert set(runs) == {
            "sweep",
            "flush",
            "reap",
            "sessionlog",
            "reconcile",
            "hooks",
            "webhooks",
        }
        sweep = runs["sweep"]
        assert sweep["runs_total"] == 1 and sweep["errors_total"] == 0
        assert sweep["last_success_at"] == sweep["last_finished_at"]
        assert sweep["last_finished_at"] is not None
        assert abs(sweep["last_finished_at"] - time.time()) < 5
        assert sweep["last_duration_seconds"] is not None

    def test_a_failed_run_is_no_success(self, r: Any) -> None:
        from presence.jobs import periodic

        def boom(report: Any) -> None:
            raise ValueError("no")

        with pytest.raises(ValueError):
            periodic.run_locked("flush", 1000, periodic.RunReport(), boom)
        flush = periodic.last_runs()["flush"]
        assert flush["last_success_at"] is None
        assert flush["last_error"] == "ValueError: no"
        assert flush["errors_total"] == 1

    @pytest.mark.parametrize(
        "ms,bucket", [(0, "0.005"), (5, "0.005"), (6, "0.01"), (1000, "1"), (31_000, "inf")]
    )
    def test_duration_buckets(self, ms: int, bucket: str) -> None:
        from presence.jobs import periodic

        assert periodic.duration_fields(ms) == {f"duration_le_{bucket}": 1, "duration_sum_ms": ms}
