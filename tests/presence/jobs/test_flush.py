"""The stats flush against real Redis and the real database (presence/jobs/flush.py).

Counters come from the real hot-path scripts (connect.lua, heartbeat.lua). Interrupted
flushes (kill -9 at every step) and an unreachable database are in test_flush_faults.py and
tests/e2e/test_celery_tasks.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest
from asgiref.sync import sync_to_async

from presence import store
from presence.api import listing as queries
from presence.jobs import flush
from presence.models import FlushRecord, RegisteredHandler, StatsBucket
from sessions_app.models import ConnectionSession

pytestmark = pytest.mark.django_db(transaction=True)

TTL = dt.timedelta(seconds=60)  # the default PRESENCE_TTL


def expiry_of(conn: store.ConnRef) -> dt.datetime:
    """The connection's expiry, from its user's shard (on whichever node holds it)."""
    shard = store.user_home(conn.uid)
    return flush._ms_to_datetime(
        int(store.client_for(shard).zscore(store.keys(shard).conns, conn.cid))
    )


def shards_with_stats() -> list[int]:
    """The shards whose live counters or claims are not empty (each on its own client)."""
    left = []
    for shard in store.all_shards():
        k, client = store.keys(shard), store.client_for(shard)
        if client.exists(k.stats) or client.zcard(k.stats_claims):
            left.append(shard)
    return left


class TestCounters:
    async def test_counters_land_in_the_bucket_of_their_minute(
        self, r, auser_factory, seed_connections
    ):
        alice, bob = await auser_factory("alice"), await auser_factory("bob")
        conns = await seed_connections([alice], per_user=2) + await seed_connections([bob])
        await store.heartbeat_many(conns)
        await store.add_counters(
            {
                "msg:heartbeat": 4,
                "msg:room.join": 2,
                "err:bad_json": 1,
                "err:rate_limited": 2,
                "h:heartbeat:calls": 4,
                "h:heartbeat:lat:0.001": 4,
            },
        )
        before = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)
        # The counters lie on the shards that counted them: each user's (connect, heartbeat)
        # and the one add_counters wrote to. One claim per shard, all into the one bucket.
        holding = await sync_to_async(shards_with_stats)()
        homes = {store.user_home(alice.pk), store.user_home(bob.pk)}
        assert homes <= set(holding)

        report = await sync_to_async(flush.run_flush)()

        assert (report.claims_applied, report.claims_released, report.error) == (
            len(holding),
            0,
            "",
        )
        bucket = await StatsBucket.objects.aget()
        assert bucket.minute in (before, before + dt.timedelta(minutes=1))
        assert (bucket.connects, bucket.heartbeats, bucket.disconnects) == (3, 3, 0)
        assert (bucket.messages, bucket.errors) == (6, 3)
        # Each shard's scripts keep that shard's peak: the claims give the largest shard's;
        # the global sum is sampled by the flush task (flush_stats), done here by hand.
        online: dict[int, tuple[int, int]] = {}  # shard -> (users, connections)
        for user, n in ((alice, 2), (bob, 1)):
            users, conns_now = online.get(store.user_home(user.pk), (0, 0))
            online[store.user_home(user.pk)] = (users + 1, conns_now + n)
        assert (bucket.peak_users, bucket.peak_connections) == (
            max(users for users, _ in online.values()),
            max(n for _, n in online.values()),
        )
        await sync_to_async(flush.sample_global_peaks)()
        bucket = await StatsBucket.objects.aget()
        assert (bucket.peak_users, bucket.peak_connections) == (2, 3)
        assert bucket.counters == {
            "err:bad_json": 1,
            "err:rate_limited": 2,
            "h:heartbeat:calls": 4,
            "h:heartbeat:lat:0.001": 4,
            "msg:heartbeat": 4,
            "msg:room.join": 2,
        }
        assert await FlushRecord.objects.acount() == len(holding)
        assert await sync_to_async(shards_with_stats)() == []

    def test_claims_of_one_minute_add_up_and_peaks_take_the_max(self):
        minute_ms = 1_800_000_000_000 // 60_000 * 60_000
        assert flush.apply("a", minute_ms + 1_000, {"heartbeats": 2, "peak_users": 5, "x": 1})
        assert flush.apply("b", minute_ms + 59_999, {"heartbeats": 3, "peak_users": 4, "x": 2})
        assert flush.apply("c", minute_ms + 60_000, {"heartbeats": 7})
        first, second = StatsBucket.objects.order_by("minute")
        assert first.minute == flush.bucket_minute(minute_ms)
        assert (first.heartbeats, first.peak_users, first.counters) == (5, 5, {"x": 3})
        assert (second.heartbeats, second.peak_users) == (7, 0)

    def test_applying_a_claim_twice_counts_it_once(self):
        assert flush.apply("same", 1_800_000_000_000, {"connects": 4, "msg:a": 1}) is True
        assert flush.apply("same", 1_800_000_000_000, {"connects": 4, "msg:a": 1}) is False
        bucket = StatsBucket.objects.get()
        assert (bucket.connects, bucket.messages) == (4, 1)
        assert FlushRecord.objects.get().fields == 2

    def test_nothing_to_flush_writes_nothing(self, r):
        report = flush.run_flush()
        assert report.claims_applied == 0
        assert not StatsBucket.objects.exists() and not FlushRecord.objects.exists()

    async def test_increments_after_the_claim_go_to_the_next_flush(self):
        await store.add_counters({"msg:a": 1})
        [shard] = await sync_to_async(shards_with_stats)()  # wherever the store put them
        client = store.client_for(shard)
        claimed = await sync_to_async(flush.claim)(client, shard=shard)
        assert claimed is not None
        await store.add_counters({"msg:a": 10})  # lands in a fresh live hash
        await sync_to_async(flush.finish)(client, *claimed, flush.FlushReport(), shard=shard)
        assert (await StatsBucket.objects.aget()).messages == 1
        await sync_to_async(flush.run_flush)()
        assert sum([b.messages async for b in StatsBucket.objects.all()]) == 11

    def test_handler_counters_update_registered_rows(self):
        RegisteredHandler.objects.create(
            type="chat.typing", path="m.f", version="7", calls=10, latency={"0.001": 1}
        )
        counters = {
            "h:chat.typing:calls": 3,
            "h:chat.typing:errors": 1,
            "h:chat.typing:timeouts": 2,
            "h:chat.typing:lat:0.001": 2,
            "h:chat.typing:lat:inf": 1,
            "h:not.registered:calls": 5,
        }
        shard0 = store.client_for(0)  # any shard's hash is flushed: shard 0's, on its node
        shard0.hset(store.keys(0).stats, mapping=counters)

        flush.run_flush()
        shard0.hset(store.keys(0).stats, mapping={"h:chat.typing:calls": 1})
        flush.run_flush()

        row = RegisteredHandler.objects.get(type="chat.typing")
        assert (row.calls, row.errors, row.timeouts) == (14, 1, 2)
        assert row.latency == {"0.001": 3, "inf": 1}
        assert row.version == "7" and row.path == "m.f"
        assert not RegisteredHandler.objects.filter(type="not.registered").exists()
        detail = {}
        for bucket in StatsBucket.objects.all():
            for name, value in bucket.counters.items():
                detail[name] = detail.get(name, 0) + value
        assert detail["h:not.registered:calls"] == 5 and detail["h:chat.typing:calls"] == 4

    def test_task_counters_are_kept_per_minute(self, r):
        from presence.jobs import sweep

        # Another run holds every shard: this run is a (counted) skip.
        tokens = {
            shard: store.acquire_task_lock(store.client_for(shard), "sweep", 10_000, shard=shard)
            for shard in store.all_shards()
        }
        assert sweep.sweep_expired().skipped  # counted into the live stats
        for shard, token in tokens.items():
            assert token is not None
            store.release_task_lock(store.client_for(shard), "sweep", token, shard=shard)
        flush.run_flush()
        assert StatsBucket.objects.get().counters["task:sweep:skipped"] == 1


class TestLastHeartbeats:
    async def test_live_sessions_get_their_last_heartbeat(self, r, auser_factory, seed_connections):
        users = [await auser_factory() for _ in range(2)]
        live = await seed_connections(users, per_user=2, age=10)
        (lapsed,) = await seed_connections([users[0]], age=120)

        report = await sync_to_async(flush.run_flush)()

        assert report.heartbeat_rows == 4
        for conn in live:
            row = await ConnectionSession.objects.aget(pk=conn.cid)
            assert row.last_heartbeat_at == expiry_of(conn) - TTL
        assert (await ConnectionSession.objects.aget(pk=lapsed.cid)).last_heartbeat_at is None

    async def test_later_runs_read_only_what_heartbeated_since(
        self, r, auser_factory, seed_connections
    ):
        conns = await seed_connections([await auser_factory()], per_user=3, age=10)
        await sync_to_async(flush.run_flush)()
        await store.heartbeat_many(conns[:1])

        report = await sync_to_async(flush.run_flush)()

        assert report.heartbeat_rows == 1
        row = await ConnectionSession.objects.aget(pk=conns[0].cid)
        assert row.last_heartbeat_at == expiry_of(conns[0]) - TTL
        assert row.last_heartbeat_at > dt.datetime.now(dt.UTC) - dt.timedelta(seconds=2)

    async def test_pages_through_equal_scores(
        self, r, monkeypatch, auser_factory, seed_connections
    ):
        """One heartbeat batch gives many connections the same score; none is skipped."""
        monkeypatch.setattr(flush, "HEARTBEAT_PAGE_SIZE", 3)
        user = await auser_factory()
        same = await seed_connections([user], per_user=7, age=5)  # one "now" for all seven
        other = await seed_connections([user], per_user=2, age=4)

        report = await sync_to_async(flush.run_flush)()

        assert (report.heartbeat_rows, report.heartbeat_pages) == (9, 3)
        for conn in same + other:
            row = await ConnectionSession.objects.aget(pk=conn.cid)
            assert row.last_heartbeat_at == expiry_of(conn) - TTL

    async def test_a_capped_run_continues_next_time(
        self, r, monkeypatch, auser_factory, seed_connections
    ):
        monkeypatch.setattr(flush, "HEARTBEAT_PAGE_SIZE", 2)
        monkeypatch.setattr(flush, "HEARTBEAT_MAX_ROWS", 4)
        user = await auser_factory()
        conns = []
        for age in (9, 8, 7, 6, 5):
            conns += await seed_connections([user], age=age)

        first = await sync_to_async(flush.run_flush)()
        second = await sync_to_async(flush.run_flush)()

        assert (first.heartbeat_rows, first.heartbeat_capped) == (4, True)
        assert second.heartbeat_capped is False
        for conn in conns:
            row = await ConnectionSession.objects.aget(pk=conn.cid)
            assert row.last_heartbeat_at == expiry_of(conn) - TTL

    async def test_last_seen_of_a_user_gone_before_the_sweep(
        self, r, settings, auser_factory, seed_connections
    ):
        """Offline in Redis, not swept yet: the API shows the heartbeat the flush wrote."""
        settings.PRESENCE_TTL = 1.0
        alice = await auser_factory("alice")
        (conn,) = await seed_connections([alice], age=0.5)
        last = expiry_of(conn) - dt.timedelta(seconds=1)
        await sync_to_async(flush.run_flush)()
        await asyncio.sleep(0.6)

        presence = await sync_to_async(queries.get_user_presence)(alice.pk)

        assert presence["online"] is False
        assert presence["last_seen"] == last.isoformat()


class TestLock:
    def test_a_shard_whose_lock_is_held_is_skipped_and_counted(self, r, settings):
        settings.PRESENCE_SHARDS = 4  # shard 0 held, three others
        shard0 = store.client_for(0)  # shard 0's node (the run's record stays on REDIS_URL: r)
        shard0.hset(store.keys(0).stats, "msg:a", 1)
        token = store.acquire_task_lock(shard0, "flush", 10_000)

        report = flush.flush_stats()
        assert (report.skipped, report.shards_skipped) == (False, 1)
        assert report.shards == store.shard_count() - 1
        assert not StatsBucket.objects.exists()  # shard 0's counters wait for its lock
        assert store.read_task_run(r, "flush")["last_shards_skipped"] == "1"

        store.release_task_lock(shard0, "flush", token)
        report = flush.flush_stats()
        assert report.claims_applied == 1
        metrics = store.read_task_run(r, "flush")
        assert metrics["runs_total"] == "2" and metrics["last_claims_applied"] == "1"
        assert int(metrics["last_duration_ms"]) >= 0
        assert shard0.exists(store.keys(0).task_lock("flush")) == 0

    def test_a_run_finding_every_shard_held_is_a_counted_skip(self, r):
        tokens = {
            shard: store.acquire_task_lock(store.client_for(shard), "flush", 10_000, shard=shard)
            for shard in store.all_shards()
        }
        assert all(tokens.values())
        assert flush.flush_stats().skipped is True
        assert store.read_task_run(r, "flush")["skipped_total"] == "1"

    def test_each_shard_claims_its_own_period(self, r):
        # another beat ran shard 0 (its period key is on shard 0's node)
        store.claim_task_period(store.client_for(0), "flush", 10_000, shard=0)

        report = flush.flush_stats(period=10.0)
        assert (report.shards, report.shards_skipped) == (store.shard_count() - 1, 1)
        # every shard's period is now claimed: a second beat's run does nothing
        assert flush.flush_stats(period=10.0).skipped is True


class TestGlobalPeaks:
    """The flush samples users and connections online over every shard into the minute's
    peaks (a shard's own peak is a fraction of the total once users spread over shards)."""

    async def test_a_run_raises_the_minutes_peaks_to_the_global_counts(
        self, auser_factory, seed_connections
    ):
        users = [await auser_factory(f"u{i}") for i in range(3)]
        await seed_connections(users, per_user=2)
        now = store.now_ms()
        minute = flush.bucket_minute(now)
        await StatsBucket.objects.acreate(minute=minute, peak_users=1, peak_connections=2)

        await sync_to_async(flush.sample_global_peaks)(now=now)

        bucket = await StatsBucket.objects.aget(minute=minute)
        assert (bucket.peak_users, bucket.peak_connections) == (3, 6)

    async def test_a_higher_peak_is_kept(self, auser_factory, seed_connections):
        await seed_connections([await auser_factory("alice")])
        now = store.now_ms()
        minute = flush.bucket_minute(now)
        await StatsBucket.objects.acreate(minute=minute, peak_users=10, peak_connections=12)

        await sync_to_async(flush.sample_global_peaks)(now=now)

        bucket = await StatsBucket.objects.aget(minute=minute)
        assert (bucket.peak_users, bucket.peak_connections) == (10, 12)

    def test_nobody_online_writes_no_row(self):
        flush.sample_global_peaks()
        assert not StatsBucket.objects.exists()

    async def test_flush_stats_samples_them(self, auser_factory, seed_connections):
        await seed_connections([await auser_factory("alice"), await auser_factory("bob")])
        for shard in store.all_shards():  # drop the shards' own peaks: only the sample is left
            await sync_to_async(store.client_for(shard).delete)(store.keys(shard).stats)

        await sync_to_async(flush.flush_stats)()

        assert await StatsBucket.objects.filter(peak_users__gte=2).aexists()
