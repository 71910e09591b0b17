"""Protocol v2 (subprotocol ``presence.v2``): batched diffs, log positions, presence.sync.

v1 clients are covered, untouched, by the other test_protocol_* files; here both kinds meet
where they differ. Positions ("seq") are event-log stream ids compared as integer pairs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY
from pytest_django.fixtures import Settings

from presence import store
from presence.live import eventlog
from presence.live.diffs import position

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]

WSFactory = Callable[..., Awaitable[Any]]
UserFactory = Callable[..., Awaitable[Any]]
V2 = ["presence.v2"]


def is_diff(room: str | None = None) -> Callable[[dict[str, Any]], bool]:
    return lambda f: f.get("type") == "presence.diff" and f.get("room") == room


async def v2_client(ws_client: WSFactory, user: Any, *, sync: bool = True) -> Any:
    """A v2 client past hello and, with ``sync``, past its global snapshot."""
    client = await ws_client(user, subprotocols=V2)
    if sync:
        reply = await client.request("presence.sync", {"room": None}, id_="sync")
        client.seq = reply["data"]["seq"]
    return client


async def diffs_until(
    client: Any, done: Callable[[list[dict[str, Any]]], bool], room: str | None = None
) -> list[dict[str, Any]]:
    """Collect the scope's diffs until ``done(diffs)``."""
    got: list[dict[str, Any]] = []
    while not done(got):
        got.append(await client.recv_until(is_diff(room), timeout=3))
    return got


def joined(diffs: list[dict[str, Any]]) -> list[str]:
    return [u["username"] for d in diffs for u in d["join"]]


class TestHandshake:
    async def test_v2_is_negotiated_and_announced(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        client = await ws_client(await auser_factory("alice"), subprotocols=V2)

        assert client.subprotocol == "presence.v2"
        assert client.hello["protocol"] == 2

    async def test_refused_v2_handshakes_still_select_the_subprotocol(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        # Browsers fail a handshake that answers an offered subprotocol without one (the
        # close code and its error frame would never reach the page).
        anonymous = await ws_client(None, subprotocols=V2, expect_hello=False)
        inactive = await ws_client(
            await auser_factory("off", is_active=False), subprotocols=V2, expect_hello=False
        )

        for client, code, error in (
            (anonymous, 4401, "unauthorized"),
            (inactive, 4403, "forbidden"),
        ):
            assert client.subprotocol == "presence.v2"
            closed, frames = await client.recv_close()
            assert (closed, [f["code"] for f in frames]) == (code, [error])

    async def test_without_the_subprotocol_hello_is_v1(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        client = await ws_client(await auser_factory("alice"), subprotocols=["other"])

        assert client.subprotocol is None
        assert "protocol" not in client.hello


class TestSync:
    async def test_snapshot_with_position(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        await ws_client(await auser_factory("bob"))
        alice = await ws_client(await auser_factory("alice"), subprotocols=V2)

        reply = await alice.request("presence.sync", {"room": None}, id_=1)

        data = reply["data"]
        assert (reply["type"], data["count"], data["complete"]) == ("reply", 2, True)
        assert sorted(u["username"] for u in data["users"]) == ["alice", "bob"]
        # The global position is the reader's own numbering (one per process over every
        # shard's log, docs/protocol.md): the snapshot is at the reader's position, which is
        # past the newest entry of every shard's log (nothing was logged after the sync).
        reader = eventlog.get_reader()
        assert reader is not None
        await asyncio.sleep(0.2)  # the reader has followed the log
        assert data["seq"] == reader.seq
        newest = max(position(eid) for eid in (await store.log_positions()).values())
        assert position(data["seq"])[0] >= newest[0]

    async def test_an_oversize_snapshot_read_from_redis_is_not_repeated_by_diffs(
        self, ws_client: WSFactory, auser_factory: UserFactory, settings: Settings
    ) -> None:
        # Past PRESENCE_SYNC_LIMIT the reader keeps no replica and the sync is answered from
        # Redis (EventLogReader.global_snapshot). The client's own join, logged by its
        # connect just before, is in that snapshot's count: it must not come again as a
        # diff (the reader may not have delivered it yet when Redis is read: a Cluster
        # reader polls).
        settings.PRESENCE_SYNC_LIMIT = 1
        await ws_client(await auser_factory("bob"))
        await asyncio.sleep(1.5)  # a quiet log: a Cluster reader now polls every 0.5 s
        alice = await ws_client(await auser_factory("alice"), subprotocols=V2)

        reply = await alice.request("presence.sync", {"room": None}, id_=1)

        data = reply["data"]
        assert (data["count"], data["complete"], len(data["users"])) == (2, False, 1)
        assert await alice.no_frame(1.0)  # longer than a quiet Cluster reader's poll
        await ws_client(await auser_factory("carol"))
        (diff,) = await diffs_until(alice, lambda d: len(d) == 1)
        assert joined([diff]) == ["carol"]
        assert position(diff["prev"]) <= position(data["seq"]) < position(diff["seq"])

    async def test_no_diffs_before_a_scope_is_synced(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice = await v2_client(ws_client, await auser_factory("alice"), sync=False)
        await ws_client(await auser_factory("bob"))

        assert await alice.no_frame(0.4)

    async def test_diffs_continue_from_the_snapshot(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice = await v2_client(ws_client, await auser_factory("alice"))
        bob = await ws_client(await auser_factory("bob"))

        (diff,) = await diffs_until(alice, lambda d: len(d) == 1)
        assert diff["join"] == [
            {"id": bob.hello["user"]["id"], "username": "bob", "status": "online"}
        ]
        assert (diff["leave"], diff["status"]) == ([], [])
        assert position(diff["prev"]) <= position(alice.seq) < position(diff["seq"])

        await bob.close()
        (left,) = await diffs_until(alice, lambda d: len(d) == 1)
        assert left["leave"] == [
            {"id": bob.hello["user"]["id"], "username": "bob", "status": "offline"}
        ]
        assert left["prev"] == diff["seq"]  # the chain a client checks for gaps

    async def test_events_of_a_window_come_as_one_frame(
        self, ws_client: WSFactory, auser_factory: UserFactory, settings: Settings
    ) -> None:
        # A window of 1.5 s (the diffs' wait is 3 s) and the four connects at once: under
        # load four connects one after another took longer than a shorter window.
        settings.PRESENCE_DIFF_WINDOW = 1.5
        alice = await v2_client(ws_client, await auser_factory("alice"))
        users = [await auser_factory(f"u{i}") for i in range(4)]

        await asyncio.gather(*(ws_client(user) for user in users))
        diffs = await diffs_until(alice, lambda d: len(joined(d)) >= 4)

        assert sorted(joined(diffs)) == ["u0", "u1", "u2", "u3"]
        assert len(diffs) == 1  # one frame for the window, not one per event

    async def test_a_user_who_came_and_went_in_a_window_is_only_a_leave(
        self, ws_client: WSFactory, auser_factory: UserFactory, settings: Settings
    ) -> None:
        # Wide enough for the test's connects on a loaded machine (0.5 s split them there).
        settings.PRESENCE_DIFF_WINDOW = 1.5
        alice = await v2_client(ws_client, await auser_factory("alice"))
        bob = await ws_client(await auser_factory("bob"))
        await bob.request("status.set", {"status": "busy"})
        await bob.close()

        (diff,) = await diffs_until(alice, lambda d: len(d) == 1)

        assert (diff["join"], diff["status"]) == ([], [])
        assert [u["username"] for u in diff["leave"]] == ["bob"]

    async def test_status_of_a_present_user(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        bob = await ws_client(await auser_factory("bob"))
        alice = await v2_client(ws_client, await auser_factory("alice"))

        await bob.request("status.set", {"status": "away"})

        (diff,) = await diffs_until(alice, lambda d: len(d) == 1)
        assert diff["status"] == [
            {"id": bob.hello["user"]["id"], "username": "bob", "status": "away"}
        ]
        assert diff["join"] == diff["leave"] == []


class TestRooms:
    async def test_join_reply_has_a_position_and_room_diffs_follow(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice = await ws_client(await auser_factory("alice"), subprotocols=V2)
        reply = await alice.request("room.join", {"room": "lobby"}, id_=1)
        assert reply["data"]["count"] == 1 and "seq" in reply["data"]

        bob = await ws_client(await auser_factory("bob"))
        await bob.request("room.join", {"room": "lobby"}, id_=2)

        (diff,) = await diffs_until(alice, lambda d: len(d) == 1, room="lobby")
        assert joined([diff]) == ["bob"]
        assert position(diff["seq"]) > position(reply["data"]["seq"])

    async def test_the_own_join_is_in_the_snapshot_not_in_a_diff(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice = await ws_client(await auser_factory("alice"), subprotocols=V2)
        reply = await alice.request("room.join", {"room": "lobby"}, id_=1)

        assert [u["username"] for u in reply["data"]["users"]] == ["alice"]
        assert await alice.no_frame(0.4)  # her join is older than the snapshot

    async def test_v1_members_of_the_same_room_still_get_one_frame_per_event(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        old = await ws_client(await auser_factory("carol"))
        await old.request("room.join", {"room": "lobby"}, id_=1)
        bob = await ws_client(await auser_factory("bob"), subprotocols=V2)

        await bob.request("room.join", {"room": "lobby"}, id_=2)

        event = await old.recv_until(
            lambda f: f.get("type") == "presence" and f.get("room") == "lobby"
        )
        assert (event["event"], event["user"]["username"]) == ("join", "carol")
        event = await old.recv_until(
            lambda f: f.get("type") == "presence" and f.get("room") == "lobby"
        )
        assert (event["event"], event["user"]["username"]) == ("join", "bob")

    async def test_leaving_stops_the_diffs(
        self, ws_client: WSFactory, auser_factory: UserFactory, settings: Settings
    ) -> None:
        settings.PRESENCE_GLOBAL_EVENTS = False
        alice = await ws_client(await auser_factory("alice"), subprotocols=V2)
        await alice.request("room.join", {"room": "lobby"}, id_=1)
        await alice.request("room.leave", {"room": "lobby"}, id_=2)
        bob = await ws_client(await auser_factory("bob"))

        await bob.request("room.join", {"room": "lobby"}, id_=3)

        assert await alice.no_frame(0.4)


class TestGaps:
    async def test_a_gap_in_the_log_pushes_fresh_state(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice_user = await auser_factory("alice")
        alice = await v2_client(ws_client, alice_user)
        reader = eventlog.get_reader()
        assert reader is not None
        # An entry whose predecessor is not the last one the reader saw: entries were lost
        # (trimmed past the reader, or a Redis restart). On the log of alice's shard, which
        # holds her join (any shard's log is followed).
        shard = store.user_home(alice_user.pk)
        store.client_for(shard).xadd(
            store.keys(shard).events, {"k": "join", "p": "1-1", "t": "0", "r": "", "u": "99"}
        )

        state = await alice.recv_until(lambda f: f["type"] == "presence.state", timeout=5)

        assert (state["room"], state["count"], state["complete"]) == (None, 1, True)
        assert [u["username"] for u in state["users"]] == ["alice"]
        assert reader.resyncs == 1
        # Afterwards diffs continue from the state's position.
        bob = await ws_client(await auser_factory("bob"))
        (diff,) = await diffs_until(alice, lambda d: len(d) == 1)
        assert joined([diff]) == ["bob"] and diff["prev"] == state["seq"]
        assert bob.hello is not None

    @pytest.mark.single_only(
        reason="kills the suite's one Redis: on the cluster and shards shapes the presence "
        "store and its logs are on other servers, which stay up"
    )
    async def test_a_reader_that_lost_redis_resyncs_its_sockets(
        self, ws_client: WSFactory, auser_factory: UserFactory, redis_server: Any
    ) -> None:
        alice = await v2_client(ws_client, await auser_factory("alice"))
        await alice.request("room.join", {"room": "lobby"}, id_="j")
        redis_server.kill()
        try:
            await asyncio.sleep(0.5)  # the reader notices
        finally:
            redis_server.start()

        # The restarted Redis lost everything (no persistence): the state says so.
        states = []
        while len(states) < 2:
            states.append(
                await alice.recv_until(lambda f: f["type"] == "presence.state", timeout=10)
            )
        assert sorted((s["room"] or "", s["count"]) for s in states) == [("", 0), ("lobby", 0)]

    @pytest.mark.single_only(
        reason="kills the suite's one Redis: on the cluster and shards shapes the presence "
        "store and its logs are on other servers, which stay up"
    )
    async def test_entries_lost_with_the_store_are_counted_and_the_socket_comes_back(
        self, ws_client: WSFactory, auser_factory: UserFactory, redis_server: Any
    ) -> None:
        gaps = REGISTRY.get_sample_value("presence_event_log_gaps_total") or 0
        alice = await v2_client(ws_client, await auser_factory("alice"))
        await alice.request("room.join", {"room": "lobby"}, id_="j")
        redis_server.kill()
        try:
            await asyncio.sleep(0.5)  # the reader notices
        finally:
            redis_server.start()  # empty: the log went back to nothing
        states = []
        while len(states) < 2:
            states.append(
                await alice.recv_until(lambda f: f["type"] == "presence.state", timeout=10)
            )
        # The loss is counted: the log is behind what the reader had delivered.
        assert (REGISTRY.get_sample_value("presence_event_log_gaps_total") or 0) > gaps

        # Alice's socket never closed: her next heartbeat writes her back, and the diffs
        # list her again (joins marked x = 1: no user.online for the hooks).
        assert await alice.request("heartbeat", id_="hb") == {"type": "heartbeat.ack", "id": "hb"}
        back = [
            await alice.recv_until(lambda f: f["type"] == "presence.diff", timeout=5)
            for _ in range(2)
        ]
        assert sorted((d.get("room") or "", joined([d])) for d in back) == [
            ("", ["alice"]),
            ("lobby", ["alice"]),
        ]


class TestReplica:
    """The global sync is answered from the reader's replica of the log: same answer."""

    async def test_sync_from_the_replica_matches_redis_through_churn(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        alice = await v2_client(ws_client, await auser_factory("alice"))  # builds the replica
        bob_user, carol_user = await auser_factory("bob"), await auser_factory("carol")
        bob1, bob2 = await ws_client(bob_user), await ws_client(bob_user)
        carol = await ws_client(carol_user)
        await carol.request("status.set", {"status": "busy"})
        await bob1.close()
        await asyncio.sleep(0.2)  # the reader has followed the log

        reply = await alice.request("presence.sync", {"room": None}, id_=2)

        expected = {u["id"]: u for u in store.list_online()[1]}
        got = {u["id"]: u for u in reply["data"]["users"]}
        assert got == expected
        assert got[carol.hello["user"]["id"]]["status"] == "busy"
        assert got[bob2.hello["user"]["id"]]["connections"] == 1
        assert reply["data"]["count"] == 3
