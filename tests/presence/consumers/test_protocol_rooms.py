"""Protocol v1 rooms: ``room.join`` / ``room.leave`` replies, room events, multi-tab rules.

Room events carry ``"room": <name>`` and reach only the room's members; "no event" is
asserted with a sentinel status change that follows the same channel-layer queue.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pytest_django.fixtures import Settings

from tests.support.redis import room_side, user_side

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]

WSFactory = Callable[..., Awaitable[Any]]
UserFactory = Callable[..., Awaitable[Any]]


def room_event(room: str) -> Callable[[dict[str, Any]], bool]:
    return lambda f: f.get("type") == "presence" and f.get("room") == room


def global_event(f: dict[str, Any]) -> bool:
    return f.get("type") == "presence" and f.get("room") is None


@pytest.fixture
async def member(ws_client: WSFactory, auser_factory: UserFactory) -> Any:
    """Carol, in room ``lobby`` and drained: she observes the room."""
    client = await ws_client(await auser_factory("carol"))
    # Her own global join first: it is logged on her user's shard and the room join on the
    # lobby's, and nothing orders two shards' entries (a polled Cluster reader may deliver
    # the room's first), so "drained" means both were received.
    await client.recv_until(global_event)
    await client.request("room.join", {"room": "lobby"}, id_="carol-join")
    await client.recv_until(room_event("lobby"))  # her own room join
    return client


class TestJoin:
    async def test_reply_lists_the_members(
        self, ws_client: WSFactory, auser_factory: UserFactory, member: Any
    ) -> None:
        bob_user = await auser_factory("bob")
        bob = await ws_client(bob_user)

        reply = await bob.request("room.join", {"room": "lobby"}, id_=3)

        assert (reply["type"], reply["id"]) == ("reply", 3)
        assert reply["data"]["count"] == 2
        assert sorted(u["username"] for u in reply["data"]["users"]) == ["bob", "carol"]

    async def test_members_get_a_join_event(
        self, ws_client: WSFactory, auser_factory: UserFactory, member: Any
    ) -> None:
        bob_user = await auser_factory("bob")
        bob = await ws_client(bob_user)
        await bob.request("status.set", {"status": "away"})

        await bob.request("room.join", {"room": "lobby"})

        assert await member.recv_until(room_event("lobby")) == {
            "type": "presence",
            "event": "join",
            "room": "lobby",
            "user": {"id": bob_user.pk, "username": "bob"},
            "status": "away",
        }

    async def test_joiner_sees_its_own_join_after_subscribing(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        bob = await ws_client(await auser_factory("bob"))

        await bob.send({"type": "room.join", "id": 1, "data": {"room": "a:b.c-d_9"}})

        event = await bob.recv_until(room_event("a:b.c-d_9"))
        assert event["event"] == "join"

    async def test_non_members_get_no_room_event(
        self, ws_client: WSFactory, auser_factory: UserFactory, member: Any
    ) -> None:
        outsider = await ws_client(await auser_factory("dave"))
        await outsider.recv_until(global_event)  # dave's own join
        bob = await ws_client(await auser_factory("bob"))
        await outsider.recv_until(global_event)  # bob's join

        await bob.request("room.join", {"room": "lobby"})
        await bob.request("status.set", {"status": "busy"})

        event = await outsider.recv_until(lambda f: f.get("type") == "presence")
        assert (event["event"], event["room"]) == ("status", None)

    async def test_second_tab_does_not_join_again(
        self, ws_client: WSFactory, auser_factory: UserFactory, member: Any
    ) -> None:
        bob_user = await auser_factory("bob")
        first, second = await ws_client(bob_user), await ws_client(bob_user)
        await first.request("room.join", {"room": "lobby"})
        assert (await member.recv_until(room_event("lobby")))["event"] == "join"

        await second.request("room.join", {"room": "lobby"})
        await second.request("status.set", {"status": "busy"})

        event = await member.recv_until(room_event("lobby"))
        assert (event["event"], event["status"]) == ("status", "busy")

    async def test_joining_twice_is_idempotent(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        bob_user = await auser_factory("bob")
        bob = await ws_client(bob_user)

        first = await bob.request("room.join", {"room": "lobby"}, id_=1)
        second = await bob.request("room.join", {"room": "lobby"}, id_=2)

        assert first["data"] == second["data"]
        k, home = user_side(bob_user.pk)  # a connection's rooms set is on its user's shard
        assert home.smembers(k.conn_rooms(bob.hello["session_id"])) == {"lobby"}

    async def test_64_character_room_name(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        bob = await ws_client(await auser_factory("bob"))

        reply = await bob.request("room.join", {"room": "r" * 64})

        assert reply["type"] == "reply"
        assert reply["data"]["count"] == 1

    async def test_room_limit_per_connection(
        self, ws_client: WSFactory, auser_factory: UserFactory, settings: Settings
    ) -> None:
        settings.PRESENCE_MAX_ROOMS_PER_CONNECTION = 2
        bob = await ws_client(await auser_factory("bob"))
        await bob.request("room.join", {"room": "a"}, id_=1)
        await bob.request("room.join", {"room": "b"}, id_=2)

        reply = await bob.request("room.join", {"room": "c"}, id_=3)

        assert (reply["type"], reply["code"], reply["id"]) == ("error", "limit_exceeded", 3)
        assert (await bob.request("room.join", {"room": "a"}, id_=4))["type"] == "reply"


class TestLeave:
    async def test_leave_reply_and_event(
        self, ws_client: WSFactory, auser_factory: UserFactory, member: Any
    ) -> None:
        bob_user = await auser_factory("bob")
        bob = await ws_client(bob_user)
        await bob.request("room.join", {"room": "lobby"})
        await member.recv_until(room_event("lobby"))

        reply = await bob.request("room.leave", {"room": "lobby"}, id_=8)

        assert reply == {"type": "reply", "id": 8, "data": {"room": "lobby"}}
        event = await member.recv_until(room_event("lobby"))
        assert (event["event"], event["user"]["id"]) == ("leave", bob_user.pk)
        k, home = room_side("lobby")  # the members are on the room's shard
        assert home.zscore(k.room("lobby"), str(bob_user.pk)) is None
        listing = await member.request("presence.list", {"room": "lobby"})
        assert [u["username"] for u in listing["data"]["users"]] == ["carol"]

    async def test_leaver_gets_no_more_room_events(
        self, ws_client: WSFactory, auser_factory: UserFactory, member: Any
    ) -> None:
        bob = await ws_client(await auser_factory("bob"))
        await bob.request("room.join", {"room": "lobby"})
        await bob.request("room.leave", {"room": "lobby"})

        await member.request("status.set", {"status": "away"})

        event = await bob.recv_until(lambda f: f.get("event") == "status")
        assert event["room"] is None  # only the global copy reached bob

    async def test_leaving_a_room_not_joined(
        self, ws_client: WSFactory, auser_factory: UserFactory, member: Any
    ) -> None:
        bob = await ws_client(await auser_factory("bob"))
        await member.recv_until(global_event)  # bob's join

        reply = await bob.request("room.leave", {"room": "lobby"}, id_=2)
        await bob.request("status.set", {"status": "busy"})

        assert reply == {"type": "reply", "id": 2, "data": {"room": "lobby"}}
        event = await member.recv_until(lambda f: f.get("type") == "presence")
        assert (event["event"], event["room"]) == ("status", None)

    async def test_first_of_two_tabs_leaving_does_not_leave(
        self, ws_client: WSFactory, auser_factory: UserFactory, member: Any
    ) -> None:
        bob_user = await auser_factory("bob")
        first, second = await ws_client(bob_user), await ws_client(bob_user)
        for tab in (first, second):
            await tab.request("room.join", {"room": "lobby"})
        await member.recv_until(room_event("lobby"))

        await first.request("room.leave", {"room": "lobby"})
        await second.request("status.set", {"status": "busy"})
        assert (await member.recv_until(room_event("lobby")))["event"] == "status"

        await second.request("room.leave", {"room": "lobby"})
        assert (await member.recv_until(room_event("lobby")))["event"] == "leave"

    async def test_closing_the_socket_leaves_its_rooms(
        self, ws_client: WSFactory, auser_factory: UserFactory, member: Any
    ) -> None:
        bob_user = await auser_factory("bob")
        bob = await ws_client(bob_user)
        # Bob's global join (his user's shard) before his room join (the lobby's): the two
        # events counted below must be his leaves, not a join a polled reader delivered late.
        await member.recv_until(global_event)
        await bob.request("room.join", {"room": "lobby"})
        await member.recv_until(room_event("lobby"))

        await bob.close()

        events = [await member.recv_until(lambda f: f.get("type") == "presence") for _ in "ab"]
        assert {(e["event"], e["room"], e["user"]["id"]) for e in events} == {
            ("leave", "lobby", bob_user.pk),
            ("leave", None, bob_user.pk),
        }


class TestRoomStatusAndListing:
    async def test_status_goes_to_the_rooms_of_the_connection(
        self, ws_client: WSFactory, auser_factory: UserFactory, member: Any
    ) -> None:
        bob = await ws_client(await auser_factory("bob"))
        await bob.request("room.join", {"room": "lobby"})
        await member.recv_until(room_event("lobby"))

        await bob.request("status.set", {"status": "busy"})

        event = await member.recv_until(room_event("lobby"))
        assert (event["event"], event["status"]) == ("status", "busy")

    async def test_status_reaches_the_rooms_of_the_users_other_tabs(
        self, ws_client: WSFactory, auser_factory: UserFactory, member: Any
    ) -> None:
        bob = await auser_factory("bob")
        in_lobby = await ws_client(bob)
        await in_lobby.request("room.join", {"room": "lobby"})
        await member.recv_until(room_event("lobby"))
        elsewhere = await ws_client(bob)  # another tab, in no room

        await elsewhere.request("status.set", {"status": "away"})

        event = await member.recv_until(room_event("lobby"))
        assert (event["event"], event["status"], event["user"]["username"]) == (
            "status",
            "away",
            "bob",
        )

    async def test_room_listing(
        self, ws_client: WSFactory, auser_factory: UserFactory, member: Any
    ) -> None:
        bob = await ws_client(await auser_factory("bob"))
        await ws_client(await auser_factory("dave"))
        await bob.request("room.join", {"room": "lobby"})
        await bob.request("room.join", {"room": "kitchen"})

        lobby = await member.request("presence.list", {"room": "lobby"}, id_=1)
        kitchen = await member.request("presence.list", {"room": "kitchen"}, id_=2)
        empty = await member.request("presence.list", {"room": "nobody-here"}, id_=3)
        everyone = await member.request("presence.list", {}, id_=4)

        assert sorted(u["username"] for u in lobby["data"]["users"]) == ["bob", "carol"]
        assert [u["username"] for u in kitchen["data"]["users"]] == ["bob"]
        assert empty["data"] == {"count": 0, "users": []}
        assert everyone["data"]["count"] == 3

    async def test_join_event_carries_the_status_another_tab_set(
        self, ws_client: WSFactory, auser_factory: UserFactory, member: Any
    ) -> None:
        bob = await auser_factory("bob")
        first = await ws_client(bob)
        second = await ws_client(bob)
        await first.request("status.set", {"status": "busy"})

        await second.request("room.join", {"room": "lobby"})

        event = await member.recv_until(room_event("lobby"))
        assert (event["event"], event["status"]) == ("join", "busy")
