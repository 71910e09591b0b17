"""The expiry sweep against real Redis and the real database (presence/jobs/sweep.py).

Scripts: claim_expired.lua, sweep_ack.lua, lock_release.lua; the run: sweep.run_sweep and
the locked sweep.sweep_expired. Real worker processes are in tests/e2e/test_celery_*.py.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from dataclasses import dataclass
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from channels.layers import get_channel_layer

from presence import store
from presence.api import listing as queries
from presence.conf import app_settings
from presence.jobs import sweep
from presence.live.fanout import GLOBAL
from sessions_app.models import ConnectionSession, EndReason
from tests.support.redis import user_side

pytestmark = pytest.mark.django_db(transaction=True)

TTL_MS = 60_000  # the default PRESENCE_TTL


def claim(shard: int, *, batch: int = 100, timeout_ms: int = 30_000, now: int | None = None) -> Any:
    """One claim on ``shard`` (its index, on the store's client of it)."""
    return store.claim_expired(
        store.client_for(shard), batch=batch, claim_timeout_ms=timeout_ms, now=now, shard=shard
    )


@dataclass
class Watch:
    """What a test watches in the event logs: scopes ("" = global) and a position in each
    shard's log."""

    scopes: tuple[str, ...]
    marks: dict[int, str]


async def listen(*scopes: str) -> Watch:
    """Watch ``scopes`` in every shard's log from now on (what the sweep logs after this)."""
    return Watch(scopes, await store.log_positions())


async def drain(watch: Watch) -> list[dict[str, str]]:
    """Every entry logged in the watched scopes since the last drain (or listen), read as the
    log readers read them: every shard's log, through the store's clients of its nodes."""
    entries = []
    for client, shards in store.follow_groups():
        got = await store.read_logs(
            client, {s: watch.marks[s] for s in shards}, count=10_000, block_ms=1
        )
        for shard, eid, fields in got:
            watch.marks[shard] = eid
            if fields.get("r") in watch.scopes:
                entries.append(fields)
    return entries


def leaves(entries: list[dict[str, str]]) -> list[tuple[int, str]]:
    """(user id, room) of each leave entry; room "" is the global one."""
    return sorted((int(e["u"]), e["r"]) for e in entries if e["k"] == "leave")


async def session(cid: str) -> ConnectionSession:
    return await ConnectionSession.objects.aget(pk=cid)


class TestClaimScript:
    async def test_claims_only_expired_and_moves_them(self, auser_factory, seed_connections):
        alice, bob = await auser_factory("alice"), await auser_factory("bob")
        old = await seed_connections([alice], per_user=3, age=120, rooms=("lobby",))
        live = await seed_connections([bob], per_user=2)
        shard = store.user_home(alice.pk)
        k, r = user_side(alice.pk)
        kb, rb = user_side(bob.pk)

        got = claim(shard)

        assert sorted(c.cid for c in got.claims) == sorted(c.cid for c in old)
        assert got.reclaimed == 0
        first = got.claims[0]
        assert (first.uid, first.username, first.rooms) == (alice.pk, "alice", ("lobby",))
        assert first.channel.startswith("specific.seed!")
        # Moved, not copied: the index keeps only live connections, the claim set the rest.
        indexed = set(r.zrange(k.conns, 0, -1)) | set(rb.zrange(kb.conns, 0, -1))
        assert indexed == {c.cid for c in live}
        assert {cid: int(s) for cid, s in r.zrange(k.sweeping, 0, -1, withscores=True)} == {
            c.cid: got.deadline for c in old
        }
        for c in got.claims:
            assert int(r.hget(k.sweeping_exp, c.cid)) == c.expiry
        assert claim(shard).claims == []
        assert claim(store.user_home(bob.pk)).claims == []

    async def test_boundary_expiring_now_is_expired(self, auser_factory, seed_connections):
        (conn,) = await seed_connections([await auser_factory()])
        shard = store.user_home(conn.uid)
        k, r = user_side(conn.uid)
        exp = int(r.zscore(k.conns, conn.cid))
        assert claim(shard, now=exp - 1).claims == []
        assert [c.cid for c in claim(shard, now=exp).claims] == [conn.cid]

    async def test_batches_are_disjoint_and_bounded(self, auser_factory, seed_connections):
        # One user's ten connections: one shard's index, whatever the placement.
        old = await seed_connections([await auser_factory()], per_user=10, age=120)
        shard = store.user_home(old[0].uid)
        seen: list[str] = []
        sizes = []
        while batch := claim(shard, batch=4).claims:
            sizes.append(len(batch))
            seen += [c.cid for c in batch]
        assert sizes == [4, 4, 2]
        assert sorted(seen) == sorted(c.cid for c in old)

    async def test_a_dead_sweeps_claims_are_taken_again(self, auser_factory, seed_connections):
        old = await seed_connections([await auser_factory()], per_user=2, age=120)
        shard = store.user_home(old[0].uid)
        now = store.now_ms()
        first = claim(shard, timeout_ms=1_000, now=now)
        assert claim(shard, now=now + 999).claims == []  # still owned by the first sweep
        again = claim(shard, timeout_ms=1_000, now=now + 1_000)
        assert again.reclaimed == 2
        assert again.deadline == now + 2_000
        assert sorted((c.cid, c.expiry) for c in again.claims) == sorted(
            (c.cid, c.expiry) for c in first.claims
        )
        assert {c.cid for c in again.claims} == {c.cid for c in old}

    async def test_late_ack_keeps_the_new_owners_claim(self, auser_factory, seed_connections):
        (conn,) = await seed_connections([await auser_factory()], age=120)
        shard = store.user_home(conn.uid)
        now = store.now_ms()
        stalled = claim(shard, timeout_ms=1_000, now=now)
        taken_over = claim(shard, timeout_ms=1_000, now=now + 1_000)
        k, r = user_side(conn.uid)
        assert store.ack_swept(r, stalled.deadline, [conn.cid], shard=shard) == 0
        assert r.zscore(k.sweeping, conn.cid) == taken_over.deadline
        assert store.ack_swept(r, taken_over.deadline, [conn.cid], shard=shard) == 1
        assert r.zcard(k.sweeping) == 0 and r.hlen(k.sweeping_exp) == 0

    async def test_users_past_the_key_grace_are_pruned(self):
        # The users index of user 1's shard (the claim prunes its shard's index, whoever is in it)
        shard = store.user_home(1)
        k, r = user_side(1)
        now = store.now_ms()
        r.zadd(k.users, {"1": now - 601_000, "2": now - 599_000, "3": now + 5_000})
        claim(shard, now=now)
        assert sorted(r.zrange(k.users, 0, -1)) == ["2", "3"]

    @pytest.mark.serial  # measures its time on a million entries: other processes would distort it
    @pytest.mark.single_only(reason="counts the commands one server ran (INFO commandstats)")
    def test_no_expired_among_a_million_live_is_a_few_commands(self, r):
        """O(expired), not O(live): a run over 1,000,000 live connections touches none."""
        k = store.keys()
        future = store.now_ms() + TTL_MS
        pipe = r.pipeline(transaction=False)
        for start in range(0, 1_000_000, 50_000):
            pipe.zadd(k.conns, {f"c{i}": future + i % 1000 for i in range(start, start + 50_000)})
        pipe.execute()
        sweep.sweep_expired()  # loads the scripts: a new server answers NOSCRIPT once
        r.config_resetstat()

        started = time.perf_counter()
        report = sweep.sweep_expired()
        elapsed = time.perf_counter() - started

        stats = r.info("commandstats")
        # Connection set-up (CLIENT SETINFO, PING, SCRIPT LOAD) and this test's CONFIG aside.
        overhead = {"config", "client", "ping", "hello", "script", "info"}
        calls = {
            name[len("cmdstat_") :]: v["calls"]
            for name, v in stats.items()
            if name[len("cmdstat_") :] not in overhead
        }
        assert report.claimed == 0 and report.batches == 0
        assert report.shards == store.shard_count()
        # Per shard, a few round trips whatever its index holds: lock SET; claim EVALSHA
        # (2 ZRANGEBYSCORE + 1 ZREMRANGEBYSCORE inside); the rooms' repair (1 ZRANGEBYSCORE
        # of the rooms index's head, no script: nothing is due); the shard's due held leaves
        # (1 ZRANGEBYSCORE, none: no script); release EVALSHA (GET + DEL). Once per run: one
        # metrics pipeline (HSET + HINCRBYs). Nothing reads an index beyond its due head.
        shards = store.shard_count()
        assert calls.get("zrangebyscore") == 4 * shards
        assert "zscan" not in calls and "zrange" not in calls and "zcard" not in calls
        assert sum(calls.values()) <= 10 * shards + 10, calls
        assert r.zcard(k.conns) == 1_000_000
        assert elapsed < 2.0


class TestSweepRun:
    async def test_ends_sessions_emits_leaves_and_expires_sockets(
        self, auser_factory, seed_connections
    ):
        alice, bob = await auser_factory("alice"), await auser_factory("bob")
        watcher = await listen(GLOBAL, "lobby")
        layer = get_channel_layer()
        gone = await seed_connections([alice], per_user=2, age=120, rooms=("lobby",))
        stays = await seed_connections([bob], rooms=("lobby",))
        # Give alice's connections channels this test can read, as her sockets would.
        sockets = [await layer.new_channel() for _ in gone]
        k, home = user_side(alice.pk)
        for conn, channel in zip(gone, sockets, strict=True):
            home.hset(k.conn(conn.cid), "channel", channel)
        expiries = {c.cid: int(home.zscore(k.conns, c.cid)) for c in gone}

        report = await sync_to_async(sweep.run_sweep)()

        assert (report.claimed, report.ended, report.sessions_ended) == (2, 2, 2)
        assert (report.rescued, report.already_ended, report.expire_sent) == (0, 0, 2)
        for conn in gone:
            row = await session(conn.cid)
            expiry = dt.datetime.fromtimestamp(expiries[conn.cid] / 1000, tz=dt.UTC)
            assert row.end_reason == EndReason.TIMEOUT
            assert row.ended_at == expiry
            assert row.last_heartbeat_at == expiry - dt.timedelta(milliseconds=TTL_MS)
        assert (await session(stays[0].cid)).is_live
        # One leave per place alice was in, though she had two connections there.
        assert leaves(await drain(watcher)) == [(alice.pk, ""), (alice.pk, "lobby")]
        for channel in sockets:
            assert await layer.receive(channel) == {"type": "presence.expire"}
        assert home.zcard(k.sweeping) == 0 and home.hlen(k.sweeping_exp) == 0
        assert store.list_online()[0] == 1
        assert store.list_online("lobby")[1][0]["id"] == bob.pk
        assert int(home.hget(k.stats, "disconnects")) == 2

    async def test_a_heartbeat_after_the_claim_keeps_the_user_online(
        self, auser_factory, seed_connections
    ):
        alice = await auser_factory("alice")
        watcher = await listen(GLOBAL)
        (conn,) = await seed_connections([alice], age=120)
        shard = store.user_home(alice.pk)
        k, r = user_side(alice.pk)
        batch = claim(shard)
        # The client was only late: its heartbeat lands between the claim and the end.
        assert await store.heartbeat_many([conn]) == [True]

        report = sweep.SweepReport()
        await sync_to_async(sweep.sweep_batch)(r, batch, report, shard=shard)

        assert (report.rescued, report.ended, report.sessions_ended) == (1, 0, 0)
        assert (await session(conn.cid)).is_live
        assert store.user_presence(alice.pk) == ("online", 1)
        assert leaves(await drain(watcher)) == []
        assert r.zcard(k.sweeping) == 0

    async def test_crash_after_claim_is_finished_by_a_later_run(
        self, settings, auser_factory, seed_connections
    ):
        settings.PRESENCE_SWEEP_CLAIM_TIMEOUT = 0.2
        alice = await auser_factory("alice")
        watcher = await listen(GLOBAL)
        (conn,) = await seed_connections([alice], age=120)
        k, r = user_side(alice.pk)
        claim(store.user_home(alice.pk), timeout_ms=200)  # ... and the sweep dies here
        assert (await sync_to_async(sweep.run_sweep)()).claimed == 0  # claim still owned

        await asyncio.sleep(0.25)
        report = await sync_to_async(sweep.run_sweep)()

        assert (report.reclaimed, report.ended, report.sessions_ended) == (1, 1, 1)
        assert (await session(conn.cid)).end_reason == EndReason.TIMEOUT
        assert leaves(await drain(watcher)) == [(alice.pk, "")]
        assert r.zcard(k.sweeping) == 0

    async def test_crash_after_redis_end_still_ends_the_row(
        self, settings, auser_factory, seed_connections
    ):
        settings.PRESENCE_SWEEP_CLAIM_TIMEOUT = 0.2
        (conn,) = await seed_connections([await auser_factory()], age=120)
        k, r = user_side(conn.uid)
        shard = store.user_home(conn.uid)
        batch = claim(shard, timeout_ms=200)
        (result,) = store.end_swept_connections([c.ref for c in batch.claims], shard=shard)
        assert result.state == 1  # ... and the sweep dies before the database

        await asyncio.sleep(0.25)
        report = await sync_to_async(sweep.run_sweep)()

        assert (report.reclaimed, report.ended, report.already_ended) == (1, 0, 1)
        assert report.sessions_ended == 1
        assert (await session(conn.cid)).end_reason == EndReason.TIMEOUT
        assert r.zcard(k.sweeping) == 0

    async def test_connection_keys_gone_still_ends_the_session(
        self, auser_factory, seed_connections
    ):
        """After an outage longer than the key grace only the index entry is left."""
        (conn,) = await seed_connections([await auser_factory()], age=120)
        k, r = user_side(conn.uid)
        r.delete(k.conn(conn.cid), k.conn_rooms(conn.cid))

        report = await sync_to_async(sweep.run_sweep)()

        assert (report.claimed, report.ended, report.already_ended) == (1, 0, 1)
        assert report.sessions_ended == 1
        assert report.expire_sent == 1  # the channel came from the database row
        assert (await session(conn.cid)).end_reason == EndReason.TIMEOUT
        assert r.zcard(k.sweeping) == 0

    async def test_closed_sessions_keep_their_end(self, r, auser_factory, seed_connections):
        """The first ending wins: a row the socket ended is not rewritten."""
        from sessions_app.actions import do_end_session

        (conn,) = await seed_connections([await auser_factory()], age=120)
        await sync_to_async(do_end_session)(conn.cid, reason=EndReason.CLOSED)

        report = await sync_to_async(sweep.run_sweep)()

        assert (report.ended, report.sessions_ended) == (1, 0)
        assert (await session(conn.cid)).end_reason == EndReason.CLOSED

    async def test_many_batches_in_one_run(self, r, settings, auser_factory, seed_connections):
        settings.PRESENCE_SWEEP_BATCH_SIZE = 3
        # One user's eight connections: one shard's index (batches are counted per shard).
        await seed_connections([await auser_factory()], per_user=8, age=120)
        report = await sync_to_async(sweep.run_sweep)()
        assert (report.batches, report.ended, report.sessions_ended) == (3, 8, 8)

    async def test_run_is_capped(self, r, settings, monkeypatch, auser_factory, seed_connections):
        settings.PRESENCE_SWEEP_BATCH_SIZE = 2
        monkeypatch.setattr(sweep, "SWEEP_MAX_BATCHES", 2)
        await seed_connections([await auser_factory()], per_user=5, age=120)
        first = await sync_to_async(sweep.run_sweep)()
        assert (first.ended, first.capped) == (4, True)
        second = await sync_to_async(sweep.run_sweep)()
        assert (second.ended, second.capped) == (1, False)

    async def test_last_seen_after_the_sweep(self, auser_factory, seed_connections):
        """The HTTP API shows when a swept user was last heard from: expiry - TTL."""
        alice = await auser_factory("alice")
        (conn,) = await seed_connections([alice], age=120)
        k, r = user_side(alice.pk)
        expiry = int(r.zscore(k.conns, conn.cid))
        await sync_to_async(sweep.run_sweep)()
        presence = await sync_to_async(queries.get_user_presence)(alice.pk)
        assert presence["online"] is False
        last_beat = expiry - int(app_settings.TTL * 1000)
        assert presence["last_seen"] == sweep.ms_to_datetime(last_beat).isoformat()


class TestLock:
    def test_a_run_finding_every_shard_held_is_skipped_and_counted(self, r):
        tokens = {
            shard: store.acquire_task_lock(store.client_for(shard), "sweep", 10_000, shard=shard)
            for shard in store.all_shards()
        }
        assert all(tokens.values())

        report = sweep.sweep_expired()

        assert report.skipped is True
        assert report.shards_skipped == store.shard_count()
        metrics = store.read_task_run(r, "sweep")
        assert metrics["skipped_total"] == "1" and "runs_total" not in metrics
        # A global task's counters: shard 0's stats hash, on its node (store.record_task_run).
        assert store.client_for(0).hget(store.keys(0).stats, "task:sweep:skipped") == "1"
        for shard, token in tokens.items():
            assert store.release_task_lock(store.client_for(shard), "sweep", token, shard=shard)
        assert sweep.sweep_expired().skipped is False
        assert store.read_task_run(r, "sweep")["runs_total"] == "1"

    def test_a_held_shard_is_skipped_the_others_swept(self, r, settings):
        settings.PRESENCE_SHARDS = 4  # shard 0 held, three others
        # Shard 0 here is any one shard of the four (not a home): its lock on its node.
        token = store.acquire_task_lock(store.client_for(0), "sweep", 10_000, shard=0)
        assert token is not None

        report = sweep.sweep_expired()

        assert (report.skipped, report.shards_skipped) == (False, 1)
        assert report.shards == store.shard_count() - 1

    def test_release_is_compare_and_delete(self, r):
        mine = store.acquire_task_lock(r, "sweep", 50)
        assert mine is not None
        time.sleep(0.1)  # expired: another run takes it
        theirs = store.acquire_task_lock(r, "sweep", 10_000)
        assert theirs is not None
        assert store.release_task_lock(r, "sweep", mine) is False
        assert r.get(store.keys().task_lock("sweep")) == theirs

    def test_run_records_duration_and_counts(self, r):
        sweep.sweep_expired()
        metrics = store.read_task_run(r, "sweep")
        assert int(metrics["last_duration_ms"]) >= 0
        assert metrics["last_claimed"] == "0" and metrics["last_skipped"] == "0"
        assert r.exists(store.keys().task_lock("sweep")) == 0

    def test_limits_keep_a_live_run_inside_its_claims(self, settings):
        """A live run stops claiming, and is stopped, long before its claims could lapse."""
        from presence.tasks import SWEEP_TIME_LIMIT

        timeout = settings.PRESENCE_SWEEP_CLAIM_TIMEOUT
        assert sweep.time_budget() <= timeout / 3
        assert SWEEP_TIME_LIMIT < timeout
