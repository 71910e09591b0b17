"""The session reaper: rows whose connection presence forgot are ended, nothing else."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.utils import timezone

from presence import store
from presence.conf import app_settings
from presence.jobs import reap
from presence.tasks import reap_sessions
from sessions_app.models import ConnectionSession, EndReason

pytestmark = pytest.mark.django_db(transaction=True)

LONG_AGO = dt.timedelta(hours=2)  # far beyond PRESENCE_TTL + PRESENCE_KEY_GRACE


async def backdate(cid: str, *, heard: dt.datetime, beat: bool = False) -> None:
    """Make a session look silent since ``heard`` (connected then, or last heartbeat then)."""
    fields: dict[str, Any] = {"connected_at": heard - dt.timedelta(minutes=1)}
    if beat:
        fields["last_heartbeat_at"] = heard
    else:
        fields["connected_at"] = heard
    await ConnectionSession.objects.filter(id=cid).aupdate(**fields)


def lose_presence_data() -> None:
    """Redis lost its data: every node of the presence store empties (one Redis, each shard
    URL, or every primary of a Cluster: its client's FLUSHALL goes to all of them)."""
    for client, _shards in store.groups():
        client.flushall()


class TestReap:
    async def test_forgotten_session_is_ended_as_timeout(
        self, r: Any, auser_factory: Any, seed_connections: Any
    ) -> None:
        (conn,) = await seed_connections([await auser_factory()])
        heard = timezone.now() - LONG_AGO
        await backdate(conn.cid, heard=heard)
        lose_presence_data()  # no sweep will ever see this connection

        report = await sync_to_async(reap.run_reap)()

        row = await ConnectionSession.objects.aget(id=conn.cid)
        assert (report.candidates, report.still_known, report.reaped) == (1, 0, 1)
        assert row.end_reason == EndReason.TIMEOUT
        assert row.ended_at == heard + dt.timedelta(seconds=app_settings.TTL)

    async def test_last_heartbeat_counts_as_heard(
        self, r: Any, auser_factory: Any, seed_connections: Any
    ) -> None:
        (conn,) = await seed_connections([await auser_factory()])
        beat = timezone.now() - LONG_AGO
        await backdate(conn.cid, heard=beat, beat=True)
        lose_presence_data()

        await sync_to_async(reap.run_reap)()

        row = await ConnectionSession.objects.aget(id=conn.cid)
        assert row.ended_at == beat + dt.timedelta(seconds=app_settings.TTL)

    async def test_session_presence_still_tracks_is_left_to_the_sweep(
        self, auser_factory: Any, seed_connections: Any
    ) -> None:
        # Its row is stale (the flush fell behind), but Redis still knows the connection.
        (conn,) = await seed_connections([await auser_factory()])
        await backdate(conn.cid, heard=timezone.now() - LONG_AGO)

        report = await sync_to_async(reap.run_reap)()

        assert (report.candidates, report.still_known, report.reaped) == (1, 1, 0)
        assert (await ConnectionSession.objects.aget(id=conn.cid)).ended_at is None

    async def test_recently_heard_and_ended_sessions_are_not_candidates(
        self, r: Any, auser_factory: Any, seed_connections: Any
    ) -> None:
        _recent, old_but_beating, ended = await seed_connections(
            [await auser_factory()], per_user=3
        )
        await backdate(
            old_but_beating.cid, heard=timezone.now() - dt.timedelta(seconds=5), beat=True
        )
        await ConnectionSession.objects.filter(id=ended.cid).aupdate(
            connected_at=timezone.now() - LONG_AGO,
            ended_at=timezone.now() - LONG_AGO,
            end_reason=EndReason.CLOSED,
        )
        lose_presence_data()

        report = await sync_to_async(reap.run_reap)()

        assert report.candidates == 0
        assert await ConnectionSession.objects.live().acount() == 2
        assert (await ConnectionSession.objects.aget(id=ended.cid)).end_reason == EndReason.CLOSED


class TestReapTask:
    def test_scheduled_by_beat(self) -> None:
        from config.celery import app

        tasks = {entry["task"] for entry in app.conf.beat_schedule.values()}
        assert "presence.reap_sessions" in tasks

    async def test_real_worker_reaps(
        self, r: Any, auser_factory: Any, seed_connections: Any, celery_worker_process: Any
    ) -> None:
        (conn,) = await seed_connections([await auser_factory()])
        await backdate(conn.cid, heard=timezone.now() - LONG_AGO)
        lose_presence_data()
        celery_worker_process(pool="solo")

        reap_sessions.delay()

        deadline = time.monotonic() + 15
        while (await ConnectionSession.objects.aget(id=conn.cid)).ended_at is None:
            assert time.monotonic() < deadline, "the worker did not reap the session"
            await asyncio.sleep(0.05)
        assert (await ConnectionSession.objects.aget(id=conn.cid)).end_reason == EndReason.TIMEOUT
