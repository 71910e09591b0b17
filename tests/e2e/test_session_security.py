"""Session security under real uvicorn processes and the real ``websockets`` client.

Findings reproduced, each across two server processes where processes matter:
- ~1 KB of nested JSON killed the connection (1006) and left the user online as a ghost;
- 500 sockets for one user and 3,000 from one address were accepted (no limits);
- logging out left the user's sockets open (on whichever process held them).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable

import pytest
import redis
from asgiref.sync import sync_to_async
from websockets.exceptions import InvalidStatus

from presence.access.auth import TOKEN_SUBPROTOCOL
from tests.support.e2e_clients import (
    CSRF,
    UserFactory,
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
from tests.support.servers import ASGIServer

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow, pytest.mark.timeout(90)]

ServerFactory = Callable[..., ASGIServer]


async def offline_at_once(r: redis.Redis, uid: int, server: ASGIServer) -> None:
    """The user is gone from presence within a few seconds (no ghost until a TTL)."""
    deadline = time.monotonic() + 5
    while r.zscore(user_keys(uid).users, str(uid)) is not None:
        assert time.monotonic() < deadline, f"ghost; server log:\n{server.log()}"
        await asyncio.sleep(0.05)


class TestHostileFrames:
    async def test_deep_nesting_is_an_error_frame_not_a_dead_connection(
        self, asgi_server: ServerFactory, auser_factory: UserFactory, r: redis.Redis
    ) -> None:
        server = asgi_server()
        alice = await auser_factory("alice")
        async with ws(server, await token_for(server, alice)) as conn:
            sid = (await recv(conn))["session_id"]
            for text in ("[" * 1000 + "]" * 1000, '{"type":"x","data":' + "[" * 1000 + "}"):
                await conn.send(text)
                error = await recv_until(conn, lambda f: f["type"] == "error")
                assert (error["type"], error["code"]) == ("error", "bad_json"), error
            ack = await request(conn, {"type": "heartbeat", "id": 5})
            assert ack == {"type": "heartbeat.ack", "id": 5}
            assert r.zscore(user_keys(alice.pk).conns, sid) is not None
        # Closed by the client: gone at once, no ghost until a TTL.
        await offline_at_once(r, alice.pk, server)
        assert "Traceback" not in server.log()

    async def test_invalid_utf8_is_closed_1007_and_leaves_no_ghost(
        self, asgi_server: ServerFactory, auser_factory: UserFactory, r: redis.Redis
    ) -> None:
        server = asgi_server()
        alice = await auser_factory("alice")
        async with ws(server, await token_for(server, alice)) as conn:
            await recv(conn)
            # A text frame whose payload is not UTF-8 (the client library would refuse to
            # build one: its protocol object is given the raw bytes).
            async with conn.send_context():
                conn.protocol.send_text(b'{"type":"\xff\xfe"}')
            code, _ = await closed_with(conn)
        assert code == 1007
        await offline_at_once(r, alice.pk, server)


class TestLimitsAcrossProcesses:
    async def test_connections_per_user(
        self, asgi_server: ServerFactory, auser_factory: UserFactory
    ) -> None:
        env = {"PRESENCE_MAX_CONNECTIONS_PER_USER": "3"}
        one, two = asgi_server(env=env), asgi_server(env=env)
        alice = await auser_factory("alice")
        async with (
            ws(one, await token_for(one, alice)) as a,
            ws(two, await token_for(two, alice)) as b,
            ws(one, await token_for(one, alice)) as c,
        ):
            for conn in (a, b, c):
                assert (await recv(conn))["type"] == "hello"
            async with ws(two, await token_for(two, alice)) as fourth:
                code, frames = await closed_with(fourth)
            assert code == 4429
            assert frames[0]["code"] == "too_many_connections"
        # Below the limit again once they closed.
        async with ws(two, await token_for(two, alice)) as again:
            assert (await recv(again))["type"] == "hello"

    async def test_connections_per_address(
        self, asgi_server: ServerFactory, auser_factory: UserFactory
    ) -> None:
        env = {"PRESENCE_MAX_CONNECTIONS_PER_ADDRESS": "4"}
        one, two = asgi_server(env=env), asgi_server(env=env)
        users = [await auser_factory(f"u{i}") for i in range(5)]
        tokens = [await token_for((one, two)[i % 2], u) for i, u in enumerate(users)]
        async with (
            ws(one, tokens[0]) as a,
            ws(two, tokens[1]) as b,
            ws(one, tokens[2]) as c,
            ws(two, tokens[3]) as d,
        ):
            for conn in (a, b, c, d):
                assert (await recv(conn))["type"] == "hello"
            async with ws(one, tokens[4]) as fifth:
                code, frames = await closed_with(fifth)
        assert (code, frames[0]["code"]) == (4429, "too_many_connections")
        assert "address" in frames[0]["message"]

    async def test_connect_rate_per_address(
        self, asgi_server: ServerFactory, auser_factory: UserFactory
    ) -> None:
        env = {"PRESENCE_ADDRESS_CONNECT_RATE": "0.2", "PRESENCE_ADDRESS_CONNECT_BURST": "3"}
        one, two = asgi_server(env=env), asgi_server(env=env)
        alice = await auser_factory("alice")
        tokens = [await token_for(one, alice) for _ in range(4)]
        for i in range(3):
            async with ws((one, two)[i % 2], tokens[i]) as conn:
                assert (await recv(conn))["type"] == "hello"
        async with ws(two, tokens[3]) as refused:
            code, frames = await closed_with(refused)
        assert (code, frames[0]["code"]) == (4429, "connect_rate_limited")
        assert 1 <= frames[0]["retry_after"] <= 5


class TestEndingAcrossProcesses:
    async def test_logout_on_one_process_closes_the_socket_on_another_within_1_s(
        self, asgi_server: ServerFactory, auser_factory: UserFactory
    ) -> None:
        one, two = asgi_server(), asgi_server()
        alice = await auser_factory("alice")
        session = await sync_to_async(session_id_for)(alice)
        async with ws(one, session=session) as conn:
            assert (await recv(conn))["type"] == "hello"

            status, _ = await http("POST", two.url + "/accounts/logout/", session, two.url)
            started = time.monotonic()

            assert status == 200
            code, frames = await closed_with(conn, within=1.0)
            assert time.monotonic() - started < 1.0
        assert (code, frames[-1]["code"]) == (4401, "session_ended")
        # The cookie is dead for sockets too.
        async with ws(two, session=session) as again:
            code, frames = await closed_with(again)
        assert code == 4401

    async def test_a_kicked_token_client_cannot_come_back_with_a_new_token(
        self, asgi_server: ServerFactory, auser_factory: UserFactory
    ) -> None:
        """The token's login session is revoked: minting more from it does not help."""
        from sessions_app.actions import do_kick_session
        from tests.support.db import session_row

        one, two = asgi_server(), asgi_server()
        alice = await auser_factory("alice")
        session = await sync_to_async(session_id_for)(alice)

        async def token() -> str:
            status, body = await http("POST", one.url + "/api/presence/token/", session, one.url)
            assert status == 200, body
            return str(body["token"])

        async with ws(one, subprotocols=["presence.v2", TOKEN_SUBPROTOCOL + await token()]) as c:
            sid = (await recv(c))["session_id"]
            await sync_to_async(do_kick_session)(await session_row(sid, live=True))
            code, _ = await closed_with(c)
        assert code == 4410
        async with ws(two, subprotocols=["presence.v2", TOKEN_SUBPROTOCOL + await token()]) as c:
            code, frames = await closed_with(c)
        assert (code, frames[0]["code"]) == (4401, "session_revoked")


class TestHandshake:
    async def test_strict_origins_refuse_other_schemes_and_ports(
        self, asgi_server: ServerFactory, auser_factory: UserFactory
    ) -> None:
        server = asgi_server(env={"PRESENCE_ALLOWED_ORIGINS": "http://127.0.0.1"})
        alice = await auser_factory("alice")
        for origin in ("https://127.0.0.1", f"http://127.0.0.1:{server.port}"):
            with pytest.raises(InvalidStatus) as refused:
                async with ws(server, await token_for(server, alice), origin=origin):
                    pass
            assert refused.value.response.status_code == 403
        async with ws(server, await token_for(server, alice), origin="http://127.0.0.1") as c:
            assert (await recv(c))["type"] == "hello"

    async def test_token_in_the_subprotocol_header(
        self, asgi_server: ServerFactory, auser_factory: UserFactory
    ) -> None:
        server = asgi_server()
        token = await token_for(server, await auser_factory("alice"))
        async with ws(server, subprotocols=["presence.v2", TOKEN_SUBPROTOCOL + token]) as conn:
            hello = await recv(conn)
            assert conn.subprotocol == "presence.v2"
        assert hello["user"]["username"] == "alice"
        assert json.dumps(hello).count(token) == 0
        assert CSRF not in server.log() and token not in server.log()
