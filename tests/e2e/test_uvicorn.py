"""End to end under a real uvicorn process, with the real ``websockets`` client library.

The server shares this run's Redis and test database. Covers the Origin check, token auth
minted by the server's own HTTP endpoint (session cookie + CSRF), heartbeats, presence seen
from another user's connection, the HTTP listing with a logged-in session, malformed frames
keeping the socket open, uvicorn's own 1009, 4401, an operator kick crossing processes, and
cleanup when frames or events meet a socket that is already closing (uvicorn raises then).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async
from websockets.exceptions import InvalidStatus

from presence.jobs import sessionlog
from sessions_app.actions import do_kick_session
from sessions_app.models import ConnectionSession, EndReason
from tests.support.db import session_row
from tests.support.e2e_clients import (
    UserFactory,
    alice_connected,
    closed_with,
    http,
    recv,
    recv_until,
    request,
    session_id_for,
    token_for,
    ws,
)
from tests.support.homes import user_keys
from tests.support.redis import mark_ended
from tests.support.servers import ASGIServer

pytestmark = [
    pytest.mark.django_db(transaction=True),
    pytest.mark.slow,
    pytest.mark.timeout(60),
]


async def ended_row(
    server: ASGIServer, sid: str, within: float = 10, *, fallback: bool = False
) -> ConnectionSession:
    """The session row once ended (the server logs the close; a session writer writes it).

    ``fallback``: the server process is gone, so this process also runs the fallback writer
    (the Celery task's body), as a worker would.
    """
    deadline = time.monotonic() + within
    while True:
        if fallback:
            await sync_to_async(sessionlog.drain_session_log)()
        try:
            return await session_row(sid, live=False, within=0.2)
        except AssertionError as missing:
            if time.monotonic() > deadline:
                raise AssertionError(f"{missing}; server log:\n{server.log()}") from None


class TestHandshake:
    async def test_foreign_origin_is_refused(
        self, asgi_server: Callable[..., ASGIServer], auser_factory: UserFactory
    ) -> None:
        server = asgi_server()
        token = await token_for(server, await auser_factory("alice"))

        with pytest.raises(InvalidStatus) as refused:
            async with ws(server, token, origin="http://evil.example"):
                pass

        assert refused.value.response.status_code == 403

    async def test_no_credentials_get_an_error_frame_then_4401(
        self, asgi_server: Callable[..., ASGIServer]
    ) -> None:
        server = asgi_server()

        async with ws(server) as conn:
            code, frames = await closed_with(conn)

        assert code == 4401
        assert [(f["type"], f["code"]) for f in frames] == [("error", "unauthorized")]


class TestPresence:
    async def test_two_users_heartbeat_and_see_each_other(
        self, asgi_server: Callable[..., ASGIServer], auser_factory: UserFactory
    ) -> None:
        server = asgi_server()
        alice_user, bob_user = await auser_factory("alice"), await auser_factory("bob")
        alice_token, bob_token = (
            await token_for(server, alice_user),
            await token_for(server, bob_user),
        )
        # Staff: may list everyone (PRESENCE_API_LIST_ALL_USERS is off).
        viewer = await sync_to_async(session_id_for)(await auser_factory("viewer", is_staff=True))

        async with ws(server, alice_token) as alice:
            hello = await recv(alice)
            assert hello["type"] == "hello"
            assert hello["user"] == {"id": alice_user.pk, "username": "alice"}
            assert await request(alice, {"type": "heartbeat", "id": 1}) == {
                "type": "heartbeat.ack",
                "id": 1,
            }

            async with ws(server, bob_token) as bob:
                await recv_until(bob, lambda f: f["type"] == "hello")
                join = await recv_until(
                    alice, lambda f: f.get("event") == "join" and f["user"]["id"] == bob_user.pk
                )
                assert join["room"] is None

                listing = await request(bob, {"type": "presence.list", "id": "l"})
                assert listing["data"]["count"] == 2
                assert {u["username"] for u in listing["data"]["users"]} == {"alice", "bob"}

                status, online = await http("GET", server.url + "/api/presence/online/", viewer)
                assert status == 200
                assert online["count"] == 2

            leave = await recv_until(alice, lambda f: f.get("event") == "leave")
            assert leave["user"]["id"] == bob_user.pk

        status, online = await http("GET", server.url + "/api/presence/online/", viewer)
        assert (status, online) == (200, {"count": 0, "users": []})
        status, _ = await http("GET", server.url + "/api/presence/online/")
        assert status == 401

    async def test_session_row_records_the_real_peer(
        self, asgi_server: Callable[..., ASGIServer], auser_factory: UserFactory
    ) -> None:
        server = asgi_server()
        async with alice_connected(server, auser_factory) as (_conn, sid):
            row = await session_row(sid)  # written behind, within milliseconds
            assert row.ip == "127.0.0.1"
            assert "websockets" in row.user_agent
            assert row.is_live

        row = await ended_row(server, sid)
        assert row.end_reason == EndReason.CLOSED


class TestMalformedFrames:
    async def test_bad_frames_keep_the_connection_open(
        self, asgi_server: Callable[..., ASGIServer], auser_factory: UserFactory
    ) -> None:
        server = asgi_server()
        async with alice_connected(server, auser_factory) as (conn, _):
            for frame, code in [
                ("{oops", "bad_json"),
                ("", "bad_json"),
                (b"\x00\x01binary", "bad_frame"),
                (b"", "bad_frame"),
                ("[]", "bad_frame"),
                ('{"type": "nope", "id": 3}', "unknown_type"),
            ]:
                await conn.send(frame)
                error = await recv_until(conn, lambda f: f["type"] == "error")
                assert error["code"] == code, (frame, error)

            assert (await request(conn, {"type": "heartbeat", "id": 9}))["type"] == "heartbeat.ack"

    async def test_over_size_frame_closes_1009(
        self, asgi_server: Callable[..., ASGIServer], auser_factory: UserFactory
    ) -> None:
        server = asgi_server(ws_max_size=1024)
        async with alice_connected(server, auser_factory) as (conn, _):
            ok = json.dumps({"type": "heartbeat", "id": 1, "pad": "x" * 900})
            assert (await request(conn, json.loads(ok)))["type"] == "heartbeat.ack"

            await conn.send(json.dumps({"type": "heartbeat", "id": 2, "pad": "x" * 2000}))
            code, _ = await closed_with(conn)

        assert code == 1009


class TestServerClose:
    async def test_frames_sent_after_a_server_close_do_not_break_the_cleanup(
        self, asgi_server: Callable[..., ASGIServer], auser_factory: UserFactory, r: redis.Redis
    ) -> None:
        server = asgi_server()
        async with alice_connected(server, auser_factory) as (conn, sid):
            uid = (await session_row(sid)).user_id
            mark_ended(r, sid, uid=uid)  # as if a sweep had ended it
            for i in range(5):  # the first is answered with 4408; the rest are in flight
                await conn.send(json.dumps({"type": "heartbeat", "id": i}))
            code, frames = await closed_with(conn)

        assert code == 4408
        assert [f["code"] for f in frames if f["type"] == "error"] == ["presence_expired"]
        row = await ended_row(server, sid)
        assert row.end_reason == EndReason.TIMEOUT
        assert "Traceback" not in server.log()

    async def test_client_closing_while_an_event_is_in_flight_is_cleaned_up(
        self, asgi_server: Callable[..., ASGIServer], auser_factory: UserFactory, r: redis.Redis
    ) -> None:
        """The server may be delivering an event (here: the user's own join) as the close arrives.

        Closing a few milliseconds after ``hello`` (and a database read) lands the close while
        the join event is being dispatched in some of these connections; every one of them
        must still be removed at once.
        """
        server = asgi_server()
        alice = await auser_factory("alice")
        sids = []
        for delay_ms in range(20):
            async with ws(server, await token_for(server, alice)) as conn:
                sids.append((await recv(conn))["session_id"])
                await asyncio.sleep(delay_ms / 1000)
                await session_row(sids[-1])

        rows = [await ended_row(server, sid) for sid in sids]
        assert [row.end_reason for row in rows] == [EndReason.CLOSED] * len(sids)
        k = user_keys(alice.pk)
        assert [sid for sid in sids if r.hexists(k.conn(sid), "uid")] == []
        assert "Traceback" not in server.log()


class TestCrossProcess:
    async def test_operator_kick_reaches_the_server_process(
        self, asgi_server: Callable[..., ASGIServer], auser_factory: UserFactory
    ) -> None:
        server = asgi_server()
        async with alice_connected(server, auser_factory) as (conn, sid):
            row = await session_row(sid)

            assert await sync_to_async(do_kick_session)(row) is True
            code, frames = await closed_with(conn)

        assert code == 4410
        assert frames[-1]["code"] == "terminated"
        row = await ended_row(server, sid)
        assert row.end_reason == EndReason.KICKED


class TestServerShutdown:
    async def test_graceful_shutdown_closes_1012_and_ends_sessions(
        self,
        asgi_server: Callable[..., ASGIServer],
        auser_factory: UserFactory,
        r: redis.Redis,
        settings: Any,
    ) -> None:
        # The server's own writer may stop before it wrote the close it logged at shutdown;
        # the fallback writer takes over what it read after this long.
        settings.PRESENCE_SESSION_LOG_CLAIM_IDLE = 0.5
        server = asgi_server()
        async with alice_connected(server, auser_factory) as (conn, sid):
            uid = (await session_row(sid)).user_id
            assert r.zscore(user_keys(uid).conns, sid) is not None
            await asyncio.to_thread(server.stop)  # SIGTERM: uvicorn shuts down gracefully
            code, _ = await closed_with(conn)

        assert code == 1012  # service restart: clients reconnect with backoff
        row = await ended_row(server, sid, fallback=True)
        assert row.end_reason == EndReason.SERVER_SHUTDOWN
        assert r.zscore(user_keys(uid).conns, sid) is None  # gone from presence at once
