"""A mass disconnect under a paused Redis leaves no ghosts (issue 18 item 2, issue 21 item 4).

200 sockets close while the redis-server process is stopped (SIGSTOP) for 2 s, longer than
the server's Redis bound (0.5 s here), so every end the server tries then fails. They used to
be given up ("could not remove connection ... from presence") and the users stayed listed
online until TTL + sweep. The server's end queue keeps them and writes them once Redis is
back: nobody is listed online and every session row ends within seconds.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable
from contextlib import AsyncExitStack
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async

from config.embedded_redis import RedisServer
from sessions_app.models import ConnectionSession, EndReason
from tests.support.db import session_log_written
from tests.support.e2e_clients import UserFactory, recv, session_id_for, ws
from tests.support.homes import listed_conns, online_uids
from tests.support.servers import ASGIServer

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.timeout(120),
]

USERS, PER_USER = 20, 10  # 200 sockets
PAUSE = 2.0
LANDED_WITHIN = 8.0  # after Redis returns: retries back off to 1 s at most


async def test_200_sockets_closed_while_redis_is_paused_all_end_once_it_returns(
    asgi_server: Callable[..., ASGIServer],
    auser_factory: UserFactory,
    redis_server: RedisServer,
    r: redis.Redis,
) -> None:
    server = asgi_server(env={"PRESENCE_REDIS_SOCKET_TIMEOUT": "0.5"})
    cookies = [
        await sync_to_async(session_id_for)(await auser_factory(f"u{i}")) for i in range(USERS)
    ]
    sids: list[str] = []
    async with AsyncExitStack() as stack:
        async with asyncio.TaskGroup() as group:
            sockets = [
                group.create_task(_open(stack, server, cookie, sids))
                for cookie in cookies
                for _ in range(PER_USER)
            ]
        conns = [task.result() for task in sockets]
        await _close_all_while_paused(conns, redis_server, r)

    deadline = time.monotonic() + LANDED_WITHIN
    while online_uids(r) or listed_conns(r):
        assert time.monotonic() < deadline, (
            f"{len(online_uids(r))} users still online; server log:\n{server.log()}"
        )
        await asyncio.sleep(0.1)

    await session_log_written(within=LANDED_WITHIN)
    rows: list[Any] = [row async for row in ConnectionSession.objects.filter(id__in=sids)]
    assert len(rows) == len(sids) == USERS * PER_USER
    assert [row.id for row in rows if row.is_live] == []
    assert {row.end_reason for row in rows} == {EndReason.CLOSED}
    assert "could not remove" not in server.log()
    assert "Traceback" not in server.log()


async def _open(stack: AsyncExitStack, server: ASGIServer, cookie: str, sids: list[str]) -> Any:
    """A cookie-authenticated socket past ``hello``, open until the test closes it."""
    conn = await stack.enter_async_context(ws(server, session=cookie))
    sids.append((await recv(conn, within=20))["session_id"])
    return conn


async def _close_all_while_paused(conns: list[Any], server: RedisServer, r: redis.Redis) -> None:
    assert len(online_uids(r)) == USERS
    await session_log_written(within=15)
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        await asyncio.gather(*(conn.close() for conn in conns))
        await asyncio.sleep(PAUSE)
    finally:
        os.kill(server.process.pid, signal.SIGCONT)
