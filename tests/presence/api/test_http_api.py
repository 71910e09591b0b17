"""HTTP API: ``GET /api/presence/online/``, ``GET /api/presence/users/<id>/``, tokens.

Presence comes from real WebSocket connections (Redis), ``last_seen`` from real session rows;
every endpoint requires a logged-in user and answers 401 JSON otherwise.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from django.test import AsyncClient
from django.utils import timezone

from config.embedded_redis import RedisServer
from presence.conf import app_settings
from sessions_app.models import ConnectionSession, EndReason
from tests.support.db import session_row
from tests.support.redis import paused

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]

WSFactory = Callable[..., Awaitable[Any]]
UserFactory = Callable[..., Awaitable[Any]]
ONLINE = "/api/presence/online/"


def user_url(uid: int) -> str:
    return f"/api/presence/users/{uid}/"


@pytest.fixture
async def viewer(async_client: AsyncClient, auser_factory: UserFactory) -> AsyncClient:
    """An HTTP client logged in as ``viewer`` (who is not connected by WebSocket), staff: may
    read everyone's presence (TestWhoMayReadEveryone has the others)."""
    await async_client.aforce_login(await auser_factory("viewer", is_staff=True))
    return async_client


async def add_session(user: Any, connected: dt.datetime, ended: dt.datetime | None) -> None:
    await ConnectionSession.objects.acreate(
        id=uuid.uuid4(),
        user=user,
        channel_name="gone",
        connected_at=connected,
        ended_at=ended,
        end_reason=EndReason.CLOSED if ended else "",
    )


class TestLoginRequired:
    @pytest.mark.parametrize(
        ("method", "path"),
        [("get", ONLINE), ("get", user_url(1)), ("post", "/api/presence/token/")],
    )
    async def test_anonymous_gets_401_json(
        self, async_client: AsyncClient, method: str, path: str
    ) -> None:
        response = await getattr(async_client, method)(path)

        assert response.status_code == 401
        assert response["Content-Type"] == "application/json"
        assert response.json() == {"error": "authentication required"}

    @pytest.mark.parametrize(
        ("method", "path"),
        [("post", ONLINE), ("delete", user_url(1)), ("get", "/api/presence/token/")],
    )
    async def test_wrong_method(self, viewer: AsyncClient, method: str, path: str) -> None:
        response = await getattr(viewer, method)(path)

        assert response.status_code == 405


class TestOnline:
    async def test_lists_connected_users(
        self, viewer: AsyncClient, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice, bob = await auser_factory("alice"), await auser_factory("bob")
        await ws_client(alice)
        await ws_client(alice)
        bob_ws = await ws_client(bob)
        await bob_ws.request("status.set", {"status": "busy"})

        response = await viewer.get(ONLINE)

        assert response.status_code == 200
        body = response.json()
        assert body["count"] == 2
        assert sorted(body["users"], key=lambda u: u["id"]) == [
            {"id": alice.pk, "username": "alice", "status": "online", "connections": 2},
            {"id": bob.pk, "username": "bob", "status": "busy", "connections": 1},
        ]

    async def test_pages_with_a_cursor_until_next_is_null(
        self, viewer: AsyncClient, ws_client: WSFactory, auser_factory: UserFactory, settings: Any
    ) -> None:
        settings.PRESENCE_LIST_LIMIT = 2
        names = ["alice", "bob", "carol", "dave", "erin"]
        for name in names:
            await ws_client(await auser_factory(name))
        seen, cursor, pages = set(), "0", 0
        while cursor is not None:
            response = await viewer.get(ONLINE, {"cursor": cursor})
            assert response.status_code == 200
            body = response.json()
            assert body["count"] == 5
            seen.update(u["username"] for u in body["users"])
            cursor, pages = body["next"], pages + 1
            assert pages < 50
        assert seen == set(names)

    @pytest.mark.parametrize("cursor", ["-1", "x", "1" * 49, ""])
    async def test_a_malformed_cursor_is_a_400(self, viewer: AsyncClient, cursor: str) -> None:
        response = await viewer.get(ONLINE, {"cursor": cursor})
        assert response.status_code == 400
        assert "cursor" in response.json()["error"]

    async def test_nobody_online(self, viewer: AsyncClient) -> None:
        response = await viewer.get(ONLINE)

        assert response.json() == {"count": 0, "users": []}

    async def test_closed_connections_are_gone_at_once(
        self, viewer: AsyncClient, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        client = await ws_client(await auser_factory("alice"))
        await client.close()

        assert (await viewer.get(ONLINE)).json() == {"count": 0, "users": []}

    async def test_room_filter(
        self, viewer: AsyncClient, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice = await ws_client(await auser_factory("alice"))
        await ws_client(await auser_factory("bob"))
        await alice.request("room.join", {"room": "team:42"})

        in_room = (await viewer.get(ONLINE, {"room": "team:42"})).json()
        empty_param = (await viewer.get(ONLINE, {"room": ""})).json()

        assert (in_room["count"], [u["username"] for u in in_room["users"]]) == (1, ["alice"])
        assert empty_param["count"] == 2

    @pytest.mark.parametrize("room", ["has space", "x" * 65, "a/b", "lobby\n", "é"])
    async def test_invalid_room_is_400(self, viewer: AsyncClient, room: str) -> None:
        response = await viewer.get(ONLINE, {"room": room})

        assert response.status_code == 400
        assert "room" in response.json()["error"]


class TestUserDetail:
    async def test_online_user(
        self, viewer: AsyncClient, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice = await auser_factory("alice")
        first = await ws_client(alice)
        await ws_client(alice)
        await first.request("status.set", {"status": "away"})

        response = await viewer.get(user_url(alice.pk))

        assert response.status_code == 200
        assert response.json() == {
            "id": alice.pk,
            "username": "alice",
            "online": True,
            "status": "away",
            "connections": 2,
            "last_seen": None,
            "rooms": [],
        }

    async def test_offline_user_after_a_connection(
        self, viewer: AsyncClient, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice = await auser_factory("alice")
        client = await ws_client(alice)
        await client.close()
        row = await session_row(client.hello["session_id"], live=False)  # written behind

        body = (await viewer.get(user_url(alice.pk))).json()

        assert (body["online"], body["status"], body["connections"]) == (False, "offline", 0)
        assert row.ended_at is not None
        assert dt.datetime.fromisoformat(body["last_seen"]) == row.ended_at

    async def test_last_seen_is_the_latest_end_of_any_session(
        self, viewer: AsyncClient, auser_factory: UserFactory
    ) -> None:
        alice = await auser_factory("alice")
        t0 = timezone.now() - dt.timedelta(hours=1)
        # A long session that ended last, and a short one that started later but ended first.
        await add_session(alice, connected=t0, ended=t0 + dt.timedelta(minutes=40))
        await add_session(
            alice, connected=t0 + dt.timedelta(minutes=5), ended=t0 + dt.timedelta(minutes=10)
        )

        body = (await viewer.get(user_url(alice.pk))).json()

        assert dt.datetime.fromisoformat(body["last_seen"]) == t0 + dt.timedelta(minutes=40)

    async def test_timed_out_session_is_last_seen_at_its_last_heartbeat(
        self, viewer: AsyncClient, auser_factory: UserFactory
    ) -> None:
        alice = await auser_factory("alice")
        beat = timezone.now() - dt.timedelta(minutes=10)
        # The sweep ends a silent session at last heartbeat + TTL; she was not seen then.
        await ConnectionSession.objects.acreate(
            id=uuid.uuid4(),
            user=alice,
            channel_name="gone",
            connected_at=beat - dt.timedelta(minutes=5),
            last_heartbeat_at=beat,
            ended_at=beat + dt.timedelta(seconds=60),
            end_reason=EndReason.TIMEOUT,
        )

        body = (await viewer.get(user_url(alice.pk))).json()

        assert dt.datetime.fromisoformat(body["last_seen"]) == beat

    async def test_never_connected(self, viewer: AsyncClient, auser_factory: UserFactory) -> None:
        bob = await auser_factory("bob")

        body = (await viewer.get(user_url(bob.pk))).json()

        assert body == {
            "id": bob.pk,
            "username": "bob",
            "online": False,
            "status": "offline",
            "connections": 0,
            "last_seen": None,
            "rooms": [],
        }

    async def test_unknown_user_is_404(self, viewer: AsyncClient) -> None:
        response = await viewer.get(user_url(999_999))

        assert response.status_code == 404
        assert response.json() == {"error": "no such user"}


class TestWhoMayReadEveryone:
    @pytest.fixture
    async def member(self, async_client: AsyncClient, auser_factory: UserFactory) -> Any:
        user = await auser_factory("member")
        await async_client.aforce_login(user)
        return user

    async def test_a_user_not_staff_may_not_list_everyone_by_default(
        self, async_client: AsyncClient, member: Any, auser_factory: UserFactory
    ) -> None:
        bob = await auser_factory("bob")

        listing = await async_client.get(ONLINE)
        detail = await async_client.get(user_url(bob.pk))

        assert (listing.status_code, listing.json()["code"]) == (403, "forbidden")
        assert (detail.status_code, detail.json()["code"]) == (403, "forbidden")
        assert "bob" not in detail.content.decode()

    async def test_nor_probe_ids_for_existence(
        self, async_client: AsyncClient, member: Any
    ) -> None:
        assert (await async_client.get(user_url(999_999))).status_code == 403

    async def test_own_presence_and_a_rooms_listing_stay_open(
        self, async_client: AsyncClient, member: Any
    ) -> None:
        mine = await async_client.get(user_url(member.pk))
        room = await async_client.get(ONLINE + "?room=lobby")

        assert (mine.status_code, mine.json()["username"]) == (200, "member")
        assert (room.status_code, room.json()) == (200, {"count": 0, "users": []})

    async def test_the_setting_opens_it_to_every_user(
        self, async_client: AsyncClient, member: Any, auser_factory: UserFactory, settings: Any
    ) -> None:
        settings.PRESENCE_API_LIST_ALL_USERS = True
        bob = await auser_factory("bob")

        assert (await async_client.get(ONLINE)).status_code == 200
        assert (await async_client.get(user_url(bob.pk))).json()["username"] == "bob"


class TestRedisDeadline:
    """One deadline per request against a paused Redis: a JSON 503 within it, not one
    socket timeout per command (6-9 s were measured with two commands and a retry)."""

    @pytest.mark.parametrize("path", [ONLINE, ONLINE + "?room=lobby", "user"])
    async def test_paused_store_answers_503_within_the_deadline(
        self,
        viewer: AsyncClient,
        auser_factory: UserFactory,
        redis_server: RedisServer,
        settings: Any,
        path: str,
    ) -> None:
        settings.PRESENCE_HTTP_REDIS_DEADLINE = 1.0
        settings.PRESENCE_REDIS_SOCKET_TIMEOUT = 3.0  # per command: what used to add up
        if path == "user":
            path = user_url((await auser_factory("bob")).pk)
        await viewer.get(path)  # the client's connection is open before the pause

        with paused(redis_server):
            started = time.monotonic()
            response = await viewer.get(path)
            took = time.monotonic() - started

        assert response.status_code == 503
        assert response.json()["code"] == "unavailable"
        assert response["Retry-After"]
        assert 0.9 <= took < 2.5, took  # the per-command timeout alone was 3 s

    async def test_a_fresh_connection_is_bounded_too(
        self, viewer: AsyncClient, redis_server: RedisServer, settings: Any
    ) -> None:
        settings.PRESENCE_HTTP_REDIS_DEADLINE = 1.0

        with paused(redis_server):
            started = time.monotonic()
            response = await viewer.get(ONLINE)
            took = time.monotonic() - started

        assert response.status_code == 503
        assert took < 2.5, took

    async def test_the_default_is_at_most_3_s(self) -> None:
        assert 0 < app_settings.HTTP_REDIS_DEADLINE <= 3.0


class TestToken:
    async def test_token_response(self, viewer: AsyncClient) -> None:
        response = await viewer.post("/api/presence/token/")

        assert response.status_code == 200
        body = response.json()
        assert set(body) == {"token", "expires_in"}
        assert body["expires_in"] == 60
        assert isinstance(body["token"], str)
        assert len(body["token"]) > 20
