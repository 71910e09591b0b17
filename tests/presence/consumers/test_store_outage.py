"""The presence store going away and coming back, with clients connected."""

from __future__ import annotations

from typing import Any

import pytest
from asgiref.sync import sync_to_async

from tests.support.db import session_log_written

pytestmark = pytest.mark.django_db(transaction=True)


class TestRedisOutage:
    async def test_heartbeat_answers_unavailable_then_recovers(
        self, ws_client: Any, user_factory: Any, redis_server: Any
    ) -> None:
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
        # The restarted server lost everything: the session is gone, so the client is told
        # to reconnect (4408) rather than silently staying invisible.
        await a.send({"type": "heartbeat", "id": 2})
        frame = await a.recv_until(lambda f: f["type"] == "error", timeout=5)
        assert frame["code"] == "presence_expired"
        out = await a.comm.receive_output(timeout=3)
        assert out == {"type": "websocket.close", "code": 4408, "reason": out.get("reason")}

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
