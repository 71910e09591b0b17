"""Protocol v1 global presence: join/leave/status events, multi-tab rules, ``presence.list``.

"No event" is asserted with a sentinel: a later event from the same sender arrives through
the same channel-layer queue, so if it comes first nothing was sent before it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from pytest_django.fixtures import Settings

from presence import store
from tests.support.redis import user_side

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]

WSFactory = Callable[..., Awaitable[Any]]
UserFactory = Callable[..., Awaitable[Any]]


def is_presence(frame: dict[str, Any]) -> bool:
    return frame.get("type") == "presence"


async def next_event(client: Any, within: float = 3) -> dict[str, Any]:
    return await client.recv_until(is_presence, timeout=within)


async def sentinel(client: Any, status: str = "busy") -> None:
    """An event the watchers will receive: this client's user sets a status."""
    await client.request("status.set", {"status": status}, id_="sentinel")


@pytest.fixture
async def watcher(ws_client: WSFactory, auser_factory: UserFactory) -> Any:
    """Carol, connected and drained of her own join: she observes everyone else."""
    client = await ws_client(await auser_factory("carol"))
    await next_event(client)
    return client


class TestJoinLeave:
    async def test_join_and_leave_events(
        self, ws_client: WSFactory, auser_factory: UserFactory, watcher: Any
    ) -> None:
        bob_user = await auser_factory("bob")
        bob = await ws_client(bob_user)

        assert await next_event(watcher) == {
            "type": "presence",
            "event": "join",
            "room": None,
            "user": {"id": bob_user.pk, "username": "bob"},
            "status": "online",
        }
        await bob.close()
        leave = await next_event(watcher, within=1)
        assert (leave["event"], leave["room"], leave["user"]) == (
            "leave",
            None,
            {"id": bob_user.pk, "username": "bob"},
        )
        assert leave["status"] == "offline"

    async def test_second_tab_does_not_join(
        self, ws_client: WSFactory, auser_factory: UserFactory, watcher: Any
    ) -> None:
        bob_user = await auser_factory("bob")
        await ws_client(bob_user)
        assert (await next_event(watcher))["event"] == "join"

        second = await ws_client(bob_user)
        await sentinel(second)

        event = await next_event(watcher)
        assert (event["event"], event["status"]) == ("status", "busy")

    async def test_closing_one_of_two_tabs_does_not_leave(
        self, ws_client: WSFactory, auser_factory: UserFactory, watcher: Any
    ) -> None:
        bob_user = await auser_factory("bob")
        first, second = await ws_client(bob_user), await ws_client(bob_user)
        await next_event(watcher)

        await first.close()
        await sentinel(second)
        assert (await next_event(watcher))["event"] == "status"

        await second.close()
        assert (await next_event(watcher))["event"] == "leave"

    async def test_graceful_close_removes_the_connection_at_once(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        bob_user = await auser_factory("bob")
        bob = await ws_client(bob_user)
        sid = bob.hello["session_id"]
        k, home = user_side(bob_user.pk)  # the connection lives on its user's shard
        assert home.exists(k.conn(sid))

        await bob.close()  # returns once the consumer's disconnect() has finished

        assert home.hgetall(k.conn(sid)).keys() == {"ended"}  # only its tombstone is left
        assert home.zscore(k.conns, sid) is None
        assert store.user_presence(bob_user.pk) == (None, 0)
        assert store.list_online() == (0, [])

    async def test_reconnect_after_leave_joins_again(
        self, ws_client: WSFactory, auser_factory: UserFactory, watcher: Any
    ) -> None:
        bob_user = await auser_factory("bob")
        await (await ws_client(bob_user)).close()
        assert [(await next_event(watcher))["event"] for _ in range(2)] == ["join", "leave"]

        await ws_client(bob_user)

        assert (await next_event(watcher))["event"] == "join"

    async def test_no_global_events_when_disabled(
        self, ws_client: WSFactory, auser_factory: UserFactory, settings: Settings
    ) -> None:
        settings.PRESENCE_GLOBAL_EVENTS = False
        alice = await ws_client(await auser_factory("alice"))
        await ws_client(await auser_factory("bob"))

        assert await alice.no_frame()
        assert (await alice.request("presence.list"))["data"]["count"] == 2


class TestStatus:
    async def test_status_set_reply_event_and_listing(
        self, ws_client: WSFactory, auser_factory: UserFactory, watcher: Any
    ) -> None:
        bob_user = await auser_factory("bob")
        bob = await ws_client(bob_user)
        await next_event(watcher)

        reply = await bob.request("status.set", {"status": "away"}, id_=5)

        assert reply == {"type": "reply", "id": 5, "data": {"status": "away"}}
        assert await next_event(watcher) == {
            "type": "presence",
            "event": "status",
            "room": None,
            "user": {"id": bob_user.pk, "username": "bob"},
            "status": "away",
        }
        listing = await watcher.request("presence.list", id_=6)
        bob_entry = next(u for u in listing["data"]["users"] if u["id"] == bob_user.pk)
        assert bob_entry["status"] == "away"

    @pytest.mark.parametrize("status", ["online", "away", "busy"])
    async def test_each_status_is_accepted(
        self, ws_client: WSFactory, auser_factory: UserFactory, status: str
    ) -> None:
        bob = await ws_client(await auser_factory("bob"))

        assert (await bob.request("status.set", {"status": status}))["data"] == {"status": status}

    async def test_status_is_shared_by_all_tabs_and_kept_for_a_new_tab(
        self, ws_client: WSFactory, auser_factory: UserFactory, watcher: Any
    ) -> None:
        bob_user = await auser_factory("bob")
        first = await ws_client(bob_user)
        await first.request("status.set", {"status": "busy"})

        await ws_client(bob_user)

        listing = await watcher.request("presence.list")
        assert {(u["id"], u["status"], u["connections"]) for u in listing["data"]["users"]} == {
            (watcher.hello["user"]["id"], "online", 1),
            (bob_user.pk, "busy", 2),
        }


class TestPresenceList:
    async def test_global_listing(self, ws_client: WSFactory, auser_factory: UserFactory) -> None:
        alice_user, bob_user = await auser_factory("alice"), await auser_factory("bob")
        alice = await ws_client(alice_user)
        await ws_client(bob_user)
        await ws_client(bob_user)

        reply = await alice.request("presence.list", id_="l")

        assert (reply["type"], reply["id"]) == ("reply", "l")
        assert reply["data"]["count"] == 2
        assert sorted(reply["data"]["users"], key=lambda u: u["id"]) == [
            {"id": alice_user.pk, "username": "alice", "status": "online", "connections": 1},
            {"id": bob_user.pk, "username": "bob", "status": "online", "connections": 2},
        ]

    async def test_listing_drops_a_user_as_soon_as_they_close(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice = await ws_client(await auser_factory("alice"))
        bob = await ws_client(await auser_factory("bob"))

        await bob.close()

        reply = await alice.request("presence.list")
        assert reply["data"]["count"] == 1
        assert [u["username"] for u in reply["data"]["users"]] == ["alice"]

    async def test_many_concurrent_clients(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        users = [await auser_factory(f"u{i}") for i in range(8)]
        clients = await asyncio.gather(*(ws_client(u) for u in users))

        reply = await clients[0].request("presence.list")

        assert reply["data"]["count"] == 8
        assert {u["id"] for u in reply["data"]["users"]} == {u.pk for u in users}
