"""A client that stops heartbeating is swept by a real Celery worker scheduled by real beat.

The WebSocket clients go through the full ASGI stack in this process; the sweep runs in
``celery worker`` subprocesses fed by ``celery beat``, through the shared Redis (broker,
presence, channel layer) and the SQLite test database.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt

import pytest

from presence import store
from sessions_app.models import ConnectionSession, EndReason
from tests.support.homes import user_keys

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

TTL, INTERVAL, SWEEP_INTERVAL = 2.0, 0.5, 0.5
FAST = {
    "PRESENCE_TTL": str(TTL),
    "PRESENCE_HEARTBEAT_INTERVAL": str(INTERVAL),
    "PRESENCE_SWEEP_INTERVAL": str(SWEEP_INTERVAL),
    "STATS_FLUSH_INTERVAL": "1",
}


async def keep_heartbeating(client) -> None:
    while True:
        await client.send({"type": "heartbeat"})
        await asyncio.sleep(INTERVAL)


def is_event(event: str, uid: int):
    return lambda f: f["type"] == "presence" and f["event"] == event and f["user"]["id"] == uid


async def test_silent_client_is_swept_leave_sent_and_socket_closed_4408(
    settings, r, auser_factory, ws_client, celery_worker_process
):
    settings.PRESENCE_TTL, settings.PRESENCE_HEARTBEAT_INTERVAL = TTL, INTERVAL
    celery_worker_process(env=FAST)
    celery_worker_process(env=FAST, beat=True)
    alice, bob = await auser_factory("alice"), await auser_factory("bob")
    bob_ws = await ws_client(bob)
    alice_ws = await ws_client(alice)
    await bob_ws.recv_until(is_event("join", alice.pk))
    alice_sid = alice_ws.hello["session_id"]
    # Alice now goes silent: no heartbeat, no close (a crashed client on a live TCP socket).
    expiry_ms = int(r.zscore(user_keys(alice.pk).conns, alice_sid))
    beats = asyncio.create_task(keep_heartbeating(bob_ws))
    try:
        await bob_ws.recv_until(is_event("leave", alice.pk), timeout=TTL + 6)
        seen_offline_ms = store.now_ms()
        code, frames = await alice_ws.recv_close(timeout=3)
        # Bob stays online (heartbeating) and, over three more sweep periods, sees no second
        # leave for alice.
        later = []
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(3 * SWEEP_INTERVAL):
                while True:
                    later.append(await bob_ws.recv(timeout=TTL))
    finally:
        beats.cancel()

    # Within PRESENCE_TTL + PRESENCE_SWEEP_INTERVAL + 1 s of her last heartbeat (here: connect).
    assert seen_offline_ms - expiry_ms <= (SWEEP_INTERVAL + 1) * 1000
    assert code == 4408
    assert frames[-1]["code"] == "presence_expired"
    session = await ConnectionSession.objects.aget(pk=alice_sid)
    assert session.end_reason == EndReason.TIMEOUT
    assert session.ended_at == dt.datetime.fromtimestamp(expiry_ms / 1000, tz=dt.UTC)
    assert not [f for f in later if is_event("leave", alice.pk)(f)]
    assert store.user_presence(bob.pk) == ("online", 1)
    assert await ConnectionSession.objects.filter(user=bob, ended_at__isnull=True).acount() == 1
    metrics = store.read_task_run(r, "sweep")
    assert int(metrics["ended_total"]) == 1 and int(metrics["runs_total"]) >= 2
