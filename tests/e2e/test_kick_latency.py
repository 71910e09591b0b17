"""Kicks within a second on an idle process (issue 18, item 4).

The inbox used to wrap channels_redis' receive (which loops over 5 s blocking pops until a
message comes) in a 10 s timeout: an idle layer "timed out" every 10 s, logged "channel layer
unreachable" and backed off, so a kick could wait for the back-off. Here a real uvicorn sits
idle for over 30 s (only heartbeats, which do not touch the channel layer), then a kick is
sent from this process and timed until the socket closes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import pytest
from asgiref.sync import sync_to_async

from sessions_app.actions import do_kick_session
from tests.support.db import session_row
from tests.support.e2e_clients import UserFactory, alice_connected, closed_with, request
from tests.support.servers import ASGIServer

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow(seconds=36),
    pytest.mark.timeout(90),
]

IDLE = 32.0  # past three of the old 10 s timeouts and three of the inbox's probes
KICK_WITHIN = 2.0  # the documented target is a second; the slack is the shared machine's


async def test_a_kick_after_30_idle_seconds_closes_the_socket_within_2s(
    asgi_server: Callable[..., ASGIServer], auser_factory: UserFactory
) -> None:
    server = asgi_server()
    async with alice_connected(server, auser_factory) as (conn, sid):
        row = await session_row(sid)
        idle_until = time.monotonic() + IDLE
        beat = 0
        while time.monotonic() < idle_until:
            await asyncio.sleep(5)
            beat += 1
            assert (await request(conn, {"type": "heartbeat", "id": beat}))["type"] == (
                "heartbeat.ack"
            )

        started = time.monotonic()
        assert await sync_to_async(do_kick_session)(row) is True
        code, _ = await closed_with(conn, within=10)
        latency = time.monotonic() - started

    assert code == 4410
    assert latency <= KICK_WITHIN, latency
    # An idle layer is not an unreachable one: no warning, no back-off.
    assert "channel layer unreachable" not in server.log(), server.log()
