"""A session row survives the crash of the only web process (rows are written behind).

A real uvicorn process accepts a real socket (``websockets``) and is SIGKILLed right after
``hello``: its session writer may or may not have written the row, and it never learns
that the socket is gone. A real ``presence_consume`` process (the long-running session
writer) writes the row, taking over what the dead writer read, and a real Celery worker fed
by real beat sweeps: after the TTL the sweep's ``close`` ends the row as ``timeout``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
from websockets.asyncio.client import connect

from presence import store
from sessions_app.models import EndReason
from tests.support.celery import CeleryProcess
from tests.support.consume import ConsumeProcess
from tests.support.db import session_log_written, session_row
from tests.support.homes import user_keys
from tests.support.servers import ASGIServer

from .test_uvicorn import token_for

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.timeout(90),
]

TTL = 2.0
FAST = {
    "PRESENCE_TTL": str(TTL),
    "PRESENCE_HEARTBEAT_INTERVAL": "1",
    "PRESENCE_SWEEP_INTERVAL": "0.5",
    "PRESENCE_SESSION_LOG_CLAIM_IDLE": "1",
}


async def test_row_of_a_killed_server_is_written_and_then_ended_as_timeout(
    asgi_server: Callable[..., ASGIServer],
    celery_worker_process: Callable[..., CeleryProcess],
    consume_process: Callable[..., ConsumeProcess],
    auser_factory: Callable[..., Awaitable[Any]],
    r: redis.Redis,
) -> None:
    server = asgi_server(env=FAST)
    alice = await auser_factory("alice")
    token = await token_for(server, alice)
    async with connect(
        f"{server.ws_url}/ws/presence/?token={token}",
        origin=server.url,  # type: ignore[arg-type]
        compression=None,
        proxy=None,
        open_timeout=10,
        close_timeout=1,
    ) as conn:
        hello = json.loads(await conn.recv())
        server.kill()  # SIGKILL: no disconnect, no graceful anything
    assert hello["type"] == "hello", hello
    sid = hello["session_id"]
    # Presence still holds it (for TTL), on alice's shard: what the row must say.
    conn_key = user_keys(alice.pk).conn(sid)
    connected_ms = int(r.hget(conn_key, "at") or 0)  # type: ignore[arg-type]
    channel = r.hget(conn_key, "channel")
    assert connected_ms and channel, r.hgetall(conn_key)

    consume_process(env=FAST, only="sessionlog")
    celery_worker_process(env=FAST)
    celery_worker_process(env=FAST, beat=True)

    row = await session_row(sid, within=15)
    assert (row.user_id, row.channel_name) == (alice.pk, channel)
    assert row.connected_at == dt.datetime.fromtimestamp(connected_ms / 1000, tz=dt.UTC)

    # No heartbeat ever came: the sweep ends it at connect + TTL, reason timeout.
    row = await session_row(sid, live=False, within=TTL + 15)
    assert row.end_reason == EndReason.TIMEOUT
    assert row.ended_at == row.connected_at + dt.timedelta(seconds=TTL)
    assert row.last_heartbeat_at == row.connected_at
    await session_log_written()
    # The long-running writer (the only one left) read the close, without an error; it
    # records what it did about once a second.
    deadline = time.monotonic() + 5
    while int(store.read_task_run(r, "sessionlog").get("entries_total", 0)) < 1:
        assert time.monotonic() < deadline, store.read_task_run(r, "sessionlog")
        await asyncio.sleep(0.1)
    assert int(store.read_task_run(r, "sessionlog").get("errors_total", 0)) == 0
