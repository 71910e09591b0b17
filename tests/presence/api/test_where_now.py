"""Where-now: ``GET /api/presence/users/<id>/`` lists the rooms the user is in, filtered
through PRESENCE_ROOM_AUTHORIZER for the asking user, in a fixed number of Redis round trips.

Presence is registered through the real scripts (connect.lua, room_join_*.lua); round trips
are counted server-side (MONITOR).
"""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client
from pytest_django.fixtures import Settings

from tests.presence.api.conftest import sent_commands
from tests.support.console import RoundTrips, seed_presence

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


def only_public_rooms(user: Any, room: str, action: str) -> bool:
    """An authorizer: ``secret:*`` rooms are for staff only (joining and listing)."""
    return not room.startswith("secret:") or user.is_staff


def url(uid: int) -> str:
    return f"/api/presence/users/{uid}/"


class TestRooms:
    def test_the_rooms_of_every_live_connection(self, viewer: Client, user_factory: Any) -> None:
        alice = user_factory("alice")
        seed_presence([alice], rooms=("lobby", "doc:1"))
        seed_presence([alice], rooms=("doc:2", "lobby"))
        seed_presence([user_factory("bob")], rooms=("elsewhere",))

        body = viewer.get(url(alice.pk)).json()

        assert body["rooms"] == ["doc:1", "doc:2", "lobby"]

    def test_an_offline_user_is_in_no_room(self, viewer: Client, user_factory: Any) -> None:
        assert viewer.get(url(user_factory("carol").pk)).json()["rooms"] == []

    def test_rooms_the_viewer_may_not_list_are_left_out(
        self, client: Client, user_factory: Any, settings: Settings
    ) -> None:
        settings.PRESENCE_ROOM_AUTHORIZER = "tests.presence.api.test_where_now.only_public_rooms"
        settings.PRESENCE_API_LIST_ALL_USERS = True  # a plain user may read others' presence
        alice = user_factory("alice")
        seed_presence([alice], rooms=("lobby", "secret:ops"))
        client.force_login(user_factory("viewer"))
        plain = client.get(url(alice.pk)).json()["rooms"]
        client.force_login(user_factory("admin", is_staff=True))
        staff = client.get(url(alice.pk)).json()["rooms"]

        assert plain == ["lobby"]
        assert staff == ["lobby", "secret:ops"]


class TestRoundTrips:
    @pytest.mark.parametrize(("connections", "rooms"), [(1, 1), (5, 40)])
    def test_fixed_whatever_the_connections_and_rooms(
        self,
        viewer: Client,
        user_factory: Any,
        round_trips: RoundTrips,
        connections: int,
        rooms: int,
    ) -> None:
        alice = user_factory("alice")
        seed_presence([alice], per_user=connections, rooms=tuple(f"r{i}" for i in range(rooms)))
        viewer.get(url(alice.pk))  # warm-up: the pool's connection exists
        round_trips.start()

        body = viewer.get(url(alice.pk)).json()

        # The presence (one pipeline of two commands) + where-now: the live connections,
        # then one SUNION of their rooms: the same commands for 1 room as for 40 on 5 tabs.
        assert sent_commands(round_trips) == ["HMGET", "ZCOUNT", "ZRANGEBYSCORE", "SUNION"]
        assert len(body["rooms"]) == rooms
