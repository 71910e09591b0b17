"""The presence store going away and coming back, with clients connected."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from presence import store
from tests.presence.consumers.test_bounded_waits import paused
from tests.support.db import session_log_written
from tests.support.homes import room_keys, user_keys

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(90)]


class TestRedisOutage:
    async def test_a_heartbeat_waits_out_a_restart_and_is_acked(
        self, ws_client: Any, user_factory: Any, redis_server: Any, r: Any
    ) -> None:
        alice = await sync_to_async(user_factory)("alice")
        a = await ws_client(alice)
        await a.request("room.join", {"room": "lobby"}, id_="j")
        redis_server.kill()
        try:
            await a.send({"type": "heartbeat", "id": 1})
            await asyncio.sleep(1.0)  # held by the writer meanwhile
        finally:
            redis_server.start()  # restarted empty: everything was lost
        ack = await a.recv_until(lambda f: f.get("id") == 1, timeout=10)
        assert ack == {"type": "heartbeat.ack", "id": 1}  # late, not an error
        # The socket wrote itself back: connection, user, room (presence/actions/recovery.py).
        k = user_keys(alice.pk)  # the user's and the connection's keys: the user's shard
        assert r.zscore(k.users, str(alice.pk)) is not None
        assert r.zscore(room_keys("lobby").room("lobby"), str(alice.pk)) is not None
        assert r.smembers(k.conn_rooms(a.hello["session_id"])) == {"lobby"}

    async def test_past_the_hold_a_heartbeat_is_unavailable_and_the_socket_stays(
        self, ws_client: Any, user_factory: Any, redis_server: Any, settings: Any
    ) -> None:
        settings.PRESENCE_HEARTBEAT_HOLD = 0.5
        alice = await sync_to_async(user_factory)("alice")
        a = await ws_client(alice)
        redis_server.kill()
        try:
            err = await a.request("heartbeat", id_=1)
            assert err["type"] == "error"
            assert err["code"] == "unavailable"
            assert "Traceback" not in err["message"]
        finally:
            redis_server.start()
        # The socket is still open: the next heartbeat re-asserts it and is acked.
        assert await a.request("heartbeat", id_=2) == {"type": "heartbeat.ack", "id": 2}

    async def test_other_frames_answer_unavailable_without_a_traceback(
        self,
        ws_client: Any,
        user_factory: Any,
        redis_server: Any,
        settings: Any,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        settings.PRESENCE_REDIS_SOCKET_TIMEOUT = 0.5
        store.reset_clients()
        alice = await sync_to_async(user_factory)("alice")
        a = await ws_client(alice)
        caplog.set_level(logging.WARNING)
        with paused(redis_server):
            replies = [await a.request("presence.list", id_=i) for i in range(3)]
        assert [f.get("code") for f in replies] == ["unavailable"] * 3
        assert not [rec for rec in caplog.records if rec.exc_info], "a traceback was logged"

    async def test_a_3s_pause_costs_clients_nothing(
        self,
        ws_client: Any,
        user_factory: Any,
        redis_server: Any,
        settings: Any,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """Issue 21: with Redis paused 3 s every heartbeat got handler_error and a traceback."""
        settings.PRESENCE_REDIS_SOCKET_TIMEOUT = 1.0
        store.reset_clients()
        users = [await sync_to_async(user_factory)(f"u{i}") for i in range(10)]
        clients = [await ws_client(u) for u in users]
        caplog.set_level(logging.WARNING)
        with paused(redis_server):
            for c in clients:
                await c.send({"type": "heartbeat", "id": "hb"})
            await asyncio.sleep(3)
        answers = [await c.recv_until(lambda f: f.get("id") == "hb", timeout=10) for c in clients]
        assert answers == [{"type": "heartbeat.ack", "id": "hb"}] * 10
        assert not [rec for rec in caplog.records if rec.exc_info], "a traceback was logged"
        outage = [rec for rec in caplog.records if rec.name == "presence.store"]
        assert 1 <= len(outage) <= 3, [rec.getMessage() for rec in outage]

    async def test_connect_while_down_is_refused_with_1013(
        self, ws_client: Any, user_factory: Any, redis_server: Any
    ) -> None:
        from sessions_app.models import ConnectionSession

        bob = await sync_to_async(user_factory)("bob")
        redis_server.kill()
        try:
            b = await ws_client(bob, expect_hello=False)
            frame = await b.recv()
            assert frame["code"] == "unavailable"
            out = await b.comm.receive_output(timeout=3)
            assert out["type"] == "websocket.close"
            assert out["code"] == 1013
        finally:
            redis_server.start()
        # connect.lua never ran, so no `open` was logged: the refused connection leaves no
        # session row (rows are written behind from the log, presence/jobs/sessionlog.py).
        await session_log_written()
        assert not await ConnectionSession.objects.filter(user=bob).aexists()
