"""PRESENCE_ROOM_AUTHORIZER: one hook decides room.join and room listings, WebSocket and HTTP.

The finding reproduced: any connection could join or list any room.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.contrib.auth.models import Group
from django.test import Client

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]

WSFactory = Callable[..., Awaitable[Any]]
UserFactory = Callable[..., Awaitable[Any]]
calls: list[tuple[str, str, str]] = []


def staff_rooms(user: Any, room: str, action: str) -> bool:
    """The documented example: only members of the group "staff" may use ``staff:*`` rooms."""
    calls.append((user.get_username(), room, action))
    return not room.startswith("staff:") or user.groups.filter(name="staff").exists()


async def no_listing(user: Any, room: str, action: str) -> bool:
    """An async authorizer: anyone may join, nobody may list."""
    return action == "join"


@pytest.fixture
def staff_only(settings: Any) -> None:
    settings.PRESENCE_ROOM_AUTHORIZER = "tests.presence.access.test_authz.staff_rooms"
    calls.clear()


async def member_of_staff(auser_factory: UserFactory, name: str) -> Any:
    user = await auser_factory(name)

    def add() -> None:
        user.groups.add(Group.objects.get_or_create(name="staff")[0])

    await sync_to_async(add)()
    return user


class TestWebSocket:
    async def test_join_is_refused_with_forbidden_and_nothing_joined(
        self, ws_client: WSFactory, auser_factory: UserFactory, staff_only: None
    ) -> None:
        client = await ws_client(await auser_factory("mallory"))

        reply = await client.request("room.join", {"room": "staff:ops"})

        assert reply["type"] == "error" and reply["code"] == "forbidden", reply
        assert calls == [("mallory", "staff:ops", "join")]
        members = await client.request("presence.list", {"room": "lobby"}, id_=2)
        assert members["type"] == "reply"  # other rooms stay open
        listing = await client.request("presence.list", {"room": "staff:ops"}, id_=3)
        assert listing["code"] == "forbidden"
        sync = await client.request("presence.sync", {"room": "staff:ops"}, id_=4)
        assert sync["code"] == "forbidden"

    async def test_a_member_of_the_group_may_join(
        self, ws_client: WSFactory, auser_factory: UserFactory, staff_only: None
    ) -> None:
        client = await ws_client(await member_of_staff(auser_factory, "sam"))

        reply = await client.request("room.join", {"room": "staff:ops"})

        assert reply["type"] == "reply", reply
        assert [u["username"] for u in reply["data"]["users"]] == ["sam"]

    async def test_an_async_authorizer_is_awaited(
        self, ws_client: WSFactory, auser_factory: UserFactory, settings: Any
    ) -> None:
        settings.PRESENCE_ROOM_AUTHORIZER = "tests.presence.access.test_authz.no_listing"
        client = await ws_client(await auser_factory("alice"))

        assert (await client.request("room.join", {"room": "a"}))["type"] == "reply"
        assert (await client.request("presence.list", {"room": "a"}, id_=2))["code"] == "forbidden"

    async def test_by_default_every_room_is_open(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        client = await ws_client(await auser_factory("alice"))
        assert (await client.request("room.join", {"room": "staff:ops"}))["type"] == "reply"


class TestHttp:
    async def test_listing_a_forbidden_room_is_403(
        self, auser_factory: UserFactory, staff_only: None
    ) -> None:
        mallory, sam = await auser_factory("mallory"), await member_of_staff(auser_factory, "sam")

        def get(user: Any) -> Any:
            browser = Client()
            browser.force_login(user)
            return browser.get("/api/presence/online/", {"room": "staff:ops"})

        refused, allowed = await sync_to_async(get)(mallory), await sync_to_async(get)(sam)

        assert refused.status_code == 403 and "staff:ops" in refused.json()["error"]
        assert allowed.status_code == 200 and allowed.json() == {"count": 0, "users": []}
