"""Protocol v1 handshake on ``/ws/presence/``: origin check, authentication, ``hello``.

Runs the full ASGI stack (origin validator, session and token auth, consumer) through
``WebsocketCommunicator`` against the real database, Redis and channel layer.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async
from django.core import signing
from django.test import AsyncClient, Client
from pytest_django.fixtures import Settings

from presence.access.auth import TOKEN_SALT, mint_token
from tests.support.homes import user_keys

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]

WSFactory = Callable[..., Awaitable[Any]]
UserFactory = Callable[..., Awaitable[Any]]


class _OldSigner(signing.TimestampSigner):
    """Signs as if two minutes ago: a token past its 60 s lifetime."""

    def timestamp(self) -> str:
        return signing.b62_encode(int(time.time()) - 120)


def session_cookie(user: Any) -> tuple[bytes, bytes]:
    """A real Django session for ``user``, as the Cookie header a browser would send."""
    client = Client()
    client.force_login(user)
    return b"cookie", f"sessionid={client.cookies['sessionid'].value}".encode()


class TestOrigin:
    @pytest.mark.parametrize("origin", ["http://evil.example", "http://localhost.evil.example"])
    async def test_foreign_origin_is_rejected(
        self, ws_client: WSFactory, auser_factory: UserFactory, origin: str
    ) -> None:
        client = await ws_client(await auser_factory("alice"), origin=origin, expect_hello=False)

        assert client.connected is False

    async def test_empty_origin_is_rejected(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        client = await ws_client(await auser_factory("alice"), origin="", expect_hello=False)

        assert client.connected is False

    @pytest.mark.parametrize("origin", ["http://localhost", "http://127.0.0.1:8000"])
    async def test_allowed_host_origin_is_accepted(
        self, ws_client: WSFactory, auser_factory: UserFactory, origin: str
    ) -> None:
        client = await ws_client(await auser_factory("alice"), origin=origin)

        assert client.connected is True
        assert client.hello["type"] == "hello"


class TestAuthentication:
    async def test_session_cookie(self, ws_client: WSFactory, auser_factory: UserFactory) -> None:
        alice = await auser_factory("alice")
        cookie = await sync_to_async(session_cookie)(alice)

        client = await ws_client(headers=[cookie])

        assert client.hello["user"] == {"id": alice.pk, "username": "alice"}

    async def test_token_from_the_http_endpoint(
        self, ws_client: WSFactory, auser_factory: UserFactory, async_client: AsyncClient
    ) -> None:
        alice = await auser_factory("alice")
        await async_client.aforce_login(alice)
        response = await async_client.post("/api/presence/token/")
        assert response.status_code == 200
        body = response.json()
        assert body["expires_in"] == 60

        client = await ws_client(token=body["token"])

        assert client.hello["user"] == {"id": alice.pk, "username": "alice"}

    async def test_no_credentials_closes_4401_after_an_error_frame(
        self, ws_client: WSFactory, r: redis.Redis
    ) -> None:
        client = await ws_client(expect_hello=False)

        assert client.connected is True  # accepted, so the reason can be delivered
        code, frames = await client.recv_close()

        assert code == 4401
        assert [(f["type"], f["id"], f["code"]) for f in frames] == [
            ("error", None, "unauthorized")
        ]
        assert r.keys("{presence}:*") == []

    @pytest.mark.parametrize(
        "make_token",
        [
            pytest.param(lambda user: "garbage", id="garbage"),
            pytest.param(lambda user: mint_token(user)[:-2] + "xx", id="tampered"),
            pytest.param(
                lambda user: _OldSigner(salt=TOKEN_SALT).sign_object(
                    {"u": user.pk, "h": user.get_session_auth_hash()}
                ),
                id="expired",
            ),
            pytest.param(
                lambda user: signing.dumps(
                    {"u": user.pk, "h": user.get_session_auth_hash()}, salt="other"
                ),
                id="other-salt",
            ),
            pytest.param(
                lambda user: signing.dumps({"u": user.pk, "h": "stale"}, salt=TOKEN_SALT),
                id="old-password",
            ),
            pytest.param(
                lambda user: signing.dumps({"u": 999_999, "h": ""}, salt=TOKEN_SALT),
                id="no-such-user",
            ),
        ],
    )
    async def test_invalid_token_closes_4401(
        self,
        ws_client: WSFactory,
        auser_factory: UserFactory,
        make_token: Callable[[Any], str],
    ) -> None:
        alice = await auser_factory("alice")
        token = await sync_to_async(make_token)(alice)

        client = await ws_client(token=token, expect_hello=False)
        code, frames = await client.recv_close()

        assert code == 4401
        assert frames[-1]["code"] == "unauthorized"

    async def test_token_dies_with_a_password_change(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice = await auser_factory("alice")
        token = await sync_to_async(mint_token)(alice)
        alice.set_password("new-password")
        await alice.asave()

        client = await ws_client(token=token, expect_hello=False)

        assert (await client.recv_close())[0] == 4401

    async def test_inactive_user_by_token_closes_4403(
        self, ws_client: WSFactory, auser_factory: UserFactory, r: redis.Redis
    ) -> None:
        ghost = await auser_factory("ghost", is_active=False)

        client = await ws_client(ghost, expect_hello=False)
        code, frames = await client.recv_close()

        assert code == 4403
        assert [(f["type"], f["code"]) for f in frames] == [("error", "forbidden")]
        assert r.keys("{presence}:*") == []

    async def test_inactive_user_by_session_is_not_let_in(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        ghost = await auser_factory("ghost")
        cookie = await sync_to_async(session_cookie)(ghost)
        ghost.is_active = False
        await ghost.asave()

        client = await ws_client(headers=[cookie], expect_hello=False)

        assert (await client.recv_close())[0] in (4401, 4403)


class TestHello:
    async def test_hello_frame(
        self, ws_client: WSFactory, auser_factory: UserFactory, settings: Settings
    ) -> None:
        settings.PRESENCE_HEARTBEAT_INTERVAL = 5
        settings.PRESENCE_TTL = 12
        alice = await auser_factory("alice")

        hello = (await ws_client(alice)).hello

        assert set(hello) == {"type", "session_id", "user", "heartbeat_interval", "presence_ttl"}
        assert hello["user"] == {"id": alice.pk, "username": "alice"}
        assert hello["heartbeat_interval"] == 5
        assert hello["presence_ttl"] == 12
        assert str(uuid.UUID(hello["session_id"])) == hello["session_id"]

    async def test_each_connection_gets_its_own_session(
        self, ws_client: WSFactory, auser_factory: UserFactory, r: redis.Redis
    ) -> None:
        alice = await auser_factory("alice")

        first, second = await ws_client(alice), await ws_client(alice)

        sids = {first.hello["session_id"], second.hello["session_id"]}
        assert len(sids) == 2
        k = user_keys(alice.pk)
        assert set(r.zrange(k.user_conns(alice.pk), 0, -1)) == sids
        assert {r.hget(k.conn(s), "uid") for s in sids} == {str(alice.pk)}

    async def test_first_connection_is_announced_to_itself(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice = await auser_factory("alice")

        client = await ws_client(alice)

        assert await client.recv() == {
            "type": "presence",
            "event": "join",
            "room": None,
            "user": {"id": alice.pk, "username": "alice"},
            "status": "online",
        }
