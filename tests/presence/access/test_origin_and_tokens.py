"""Strict Origin option, and tokens: single use, in the Sec-WebSocket-Protocol header.

Findings reproduced: ``https://`` and other-port Origins of an allowed host were accepted
(scheme and port were never compared); a token could be replayed, and only travelled in
the URL (where access logs keep it).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async

from presence.access.auth import TOKEN_SUBPROTOCOL, mint_token

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]

WSFactory = Callable[..., Awaitable[Any]]
UserFactory = Callable[..., Awaitable[Any]]


class TestStrictOrigins:
    @pytest.mark.parametrize(
        "origin",
        [
            "https://localhost",
            "http://localhost:8443",
            "http://127.0.0.1:8000",
            "http://evil.example",
        ],
    )
    async def test_anything_but_the_exact_origins_is_refused(
        self, ws_client: WSFactory, auser_factory: UserFactory, settings: Any, origin: str
    ) -> None:
        settings.PRESENCE_ALLOWED_ORIGINS = ["http://localhost", "https://app.example.com:8443"]

        client = await ws_client(await auser_factory("alice"), origin=origin, expect_hello=False)

        assert client.connected is False

    @pytest.mark.parametrize(
        "origin", ["http://localhost", "http://localhost:80", "https://APP.example.com:8443"]
    )
    async def test_the_exact_origins_are_accepted(
        self, ws_client: WSFactory, auser_factory: UserFactory, settings: Any, origin: str
    ) -> None:
        settings.PRESENCE_ALLOWED_ORIGINS = ["http://localhost", "https://app.example.com:8443"]

        client = await ws_client(await auser_factory("alice"), origin=origin)

        assert client.hello["type"] == "hello"

    async def test_without_the_setting_any_scheme_and_port_of_an_allowed_host_passes(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        """The documented default (Channels' allowed-hosts check), unchanged."""
        client = await ws_client(await auser_factory("alice"), origin="https://localhost:8443")
        assert client.hello["type"] == "hello"


class TestTokens:
    async def test_in_the_subprotocol_header(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice = await auser_factory("alice")
        token = await sync_to_async(mint_token)(alice)

        client = await ws_client(
            None, headers=[], subprotocols=["presence.v2", TOKEN_SUBPROTOCOL + token]
        )

        assert client.hello["user"]["username"] == "alice"
        assert client.subprotocol == "presence.v2"  # never the token echoed back

    async def test_v1_clients_name_presence_v1_beside_the_token(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        token = await sync_to_async(mint_token)(await auser_factory("alice"))

        client = await ws_client(None, subprotocols=["presence.v1", TOKEN_SUBPROTOCOL + token])

        assert client.subprotocol == "presence.v1"
        assert "protocol" not in client.hello

    async def test_a_token_is_a_valid_subprotocol_token(self, auser_factory: UserFactory) -> None:
        """RFC 6455: a subprotocol is an HTTP token; Django's signing separator ':' is not."""
        token = await sync_to_async(mint_token)(await auser_factory("alice"))
        allowed = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")
        assert set(token) <= allowed

    @pytest.mark.parametrize("where", ["query", "subprotocol"])
    async def test_a_token_opens_one_connection(
        self, ws_client: WSFactory, auser_factory: UserFactory, where: str
    ) -> None:
        token = await sync_to_async(mint_token)(await auser_factory("alice"))

        def connect(**kwargs: Any) -> Awaitable[Any]:
            if where == "query":
                return ws_client(token=token, **kwargs)
            return ws_client(
                None, subprotocols=["presence.v2", TOKEN_SUBPROTOCOL + token], **kwargs
            )

        first = await connect()
        replay = await connect(expect_hello=False)

        assert first.hello["type"] == "hello"
        code, frames = await replay.recv_close()
        assert (code, frames[0]["code"]) == (4401, "token_used")
