"""``presence.watch``: a connection watches users without joining their rooms.

Real sockets through the full ASGI stack (WebsocketCommunicator), the private Redis and the
process's event log reader: the reply, the online/offline/status frames, the cap, the
authorizer, clearing, and that nobody else learns of the watch.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from django.utils import timezone
from pytest_django.fixtures import Settings

from sessions_app.models import ConnectionSession, EndReason
from tests.support.ws import WSClient

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]

WSFactory = Callable[..., Awaitable[WSClient]]
UserFactory = Callable[..., Awaitable[Any]]


def no_watching_bob(user: Any, watched: int, action: str) -> bool:
    """A watch authorizer: nobody may watch the user named bob."""
    from django.contrib.auth import get_user_model

    assert action == "watch"
    return not get_user_model().objects.filter(pk=watched, username="bob").exists()


def is_watch(frame: dict[str, Any]) -> bool:
    return frame["type"] == "presence.watch"


async def watch(client: WSClient, uids: list[int], id_: Any = "w") -> dict[str, Any]:
    return await client.request("presence.watch", {"users": uids}, id_=id_)


class TestReply:
    async def test_each_watched_users_presence(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice, bob, carol = [await auser_factory(n) for n in ("alice", "bob", "carol")]
        alice_ws = await ws_client(alice)
        await alice_ws.request("status.set", {"status": "away"})
        ended = timezone.now() - dt.timedelta(minutes=3)
        await ConnectionSession.objects.acreate(
            id=uuid.uuid4(),
            user=bob,
            channel_name="gone",
            connected_at=ended - dt.timedelta(hours=1),
            ended_at=ended,
            end_reason=EndReason.CLOSED,
        )
        watcher = await ws_client(carol)

        reply = await watch(watcher, [bob.pk, alice.pk, 999_999, alice.pk])

        assert reply["type"] == "reply"
        users = reply["data"]["users"]
        assert [u["id"] for u in users] == [bob.pk, alice.pk]  # no such user: left out
        assert users[0] == {
            "id": bob.pk,
            "username": "bob",
            "online": False,
            "status": "offline",
            "last_seen": ended.isoformat(),
            "last_active": None,
        }
        assert users[1]["online"] is True
        assert users[1]["status"] == "away"
        assert users[1]["last_seen"] is None
        assert abs(users[1]["last_active"] - timezone.now().timestamp()) < 10

    async def test_bad_payloads(self, ws_client: WSFactory, auser_factory: UserFactory) -> None:
        client = await ws_client(await auser_factory("carol"))

        for data in ({"users": "1"}, {"users": [0]}, {"users": ["1"]}, {}):
            reply = await client.request("presence.watch", data)
            assert (reply["type"], reply["code"]) == ("error", "invalid_payload")


class TestFrames:
    async def test_online_status_offline_of_watched_users_only(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice, dave, carol = (
            await auser_factory("alice"),
            await auser_factory("dave"),
            await auser_factory("carol"),
        )
        watcher = await ws_client(carol)
        await watch(watcher, [alice.pk])

        await ws_client(dave)  # not watched
        alice_ws = await ws_client(alice)
        online = await watcher.recv_until(is_watch)
        await alice_ws.request("status.set", {"status": "busy"})
        status = await watcher.recv_until(is_watch)
        await alice_ws.close()
        offline = await watcher.recv_until(is_watch)

        assert online["event"] == "online"
        assert online["user"]["id"] == alice.pk
        assert (online["user"]["username"], online["user"]["online"]) == ("alice", True)
        assert abs(online["user"]["last_active"] - timezone.now().timestamp()) < 10
        assert (status["event"], status["user"]["status"]) == ("status", "busy")
        assert offline["event"] == "offline"
        assert (offline["user"]["online"], offline["user"]["status"]) == (False, "offline")
        assert offline["user"]["last_seen"] is not None
        # Dave's connect produced no watch frame (the first one after watching is alice's).
        assert online["user"]["id"] != dave.pk

    async def test_v2_clients_get_the_same_frames(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice, carol = await auser_factory("alice"), await auser_factory("carol")
        watcher = await ws_client(carol, subprotocols=["presence.v2"])
        await watch(watcher, [alice.pk])

        await ws_client(alice)
        frame = await watcher.recv_until(is_watch)

        assert (frame["event"], frame["user"]["id"]) == ("online", alice.pk)

    async def test_an_empty_list_stops_watching(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice, carol = await auser_factory("alice"), await auser_factory("carol")
        watcher = await ws_client(carol, subprotocols=["presence.v2"])
        await watch(watcher, [alice.pk])

        assert (await watch(watcher, [], id_="clear"))["data"] == {"users": []}
        await ws_client(alice)
        await watcher.send({"type": "heartbeat", "id": "after"})

        frame = await watcher.recv_until(lambda f: f["type"] in ("presence.watch", "heartbeat.ack"))
        assert frame["type"] == "heartbeat.ack"

    async def test_a_new_list_replaces_the_old(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice, bob, carol = (
            await auser_factory("alice"),
            await auser_factory("bob"),
            await auser_factory("carol"),
        )
        watcher = await ws_client(carol, subprotocols=["presence.v2"])
        await watch(watcher, [alice.pk])
        await watch(watcher, [bob.pk], id_="again")

        await ws_client(alice)
        await ws_client(bob)
        frame = await watcher.recv_until(is_watch)

        assert frame["user"]["id"] == bob.pk

    async def test_nobody_else_learns_of_the_watch(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice, dave, carol = (
            await auser_factory("alice"),
            await auser_factory("dave"),
            await auser_factory("carol"),
        )
        alice_ws = await ws_client(alice)
        dave_ws = await ws_client(dave)
        for client in (alice_ws, dave_ws):
            await client.request("room.join", {"room": "lobby"}, id_="j")
        watcher = await ws_client(carol, subprotocols=["presence.v2"])
        await alice_ws.recv_until(lambda f: f["type"] == "presence" and f["user"]["id"] == carol.pk)
        await dave_ws.recv_until(lambda f: f["type"] == "presence" and f["user"]["id"] == carol.pk)

        await watch(watcher, [alice.pk, dave.pk])

        # Watching sends nothing to the watched users or the room's members: the next frame
        # each of them gets is the answer to their own heartbeat.
        await alice_ws.send({"type": "heartbeat", "id": "a"})
        await dave_ws.send({"type": "heartbeat", "id": "d"})
        assert (await alice_ws.recv())["type"] == "heartbeat.ack"
        assert (await dave_ws.recv())["type"] == "heartbeat.ack"


class TestLimits:
    async def test_more_than_max_watched_is_refused(
        self, ws_client: WSFactory, auser_factory: UserFactory, settings: Settings
    ) -> None:
        settings.PRESENCE_MAX_WATCHED = 2
        client = await ws_client(await auser_factory("carol"))

        refused = await watch(client, [1, 2, 3])
        allowed = await watch(client, [1, 2, 2, 1], id_="ok")

        assert (refused["type"], refused["code"]) == ("error", "too_many_watched")
        assert allowed["type"] == "reply"

    async def test_the_authorizer_refuses_with_forbidden(
        self, ws_client: WSFactory, auser_factory: UserFactory, settings: Settings
    ) -> None:
        settings.PRESENCE_WATCH_AUTHORIZER = "tests.presence.handlers.test_watch.no_watching_bob"
        alice, bob = await auser_factory("alice"), await auser_factory("bob")
        client = await ws_client(await auser_factory("carol"))

        refused = await watch(client, [alice.pk, bob.pk])
        allowed = await watch(client, [alice.pk], id_="ok")

        assert (refused["type"], refused["code"]) == ("error", "forbidden")
        assert str(bob.pk) in refused["message"]
        assert [u["id"] for u in allowed["data"]["users"]] == [alice.pk]
