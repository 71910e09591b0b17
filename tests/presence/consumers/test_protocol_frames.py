"""Protocol v1 frame handling: heartbeat acks, every error code, and identity from the socket.

Each malformed frame must be answered with ``{"type": "error", "id", "code", "message"}`` and
leave the connection open (a heartbeat afterwards is still acknowledged).
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis

from presence import store
from tests.support.homes import user_keys
from tests.support.wire import stats_sum

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(30)]

WSFactory = Callable[..., Awaitable[Any]]
UserFactory = Callable[..., Awaitable[Any]]


@pytest.fixture
async def alice(ws_client: WSFactory, auser_factory: UserFactory) -> Any:
    client = await ws_client(await auser_factory("alice"))
    await client.recv()  # her own global join
    return client


async def assert_still_open(client: Any, frame_id: int = 424242) -> None:
    assert await client.request("heartbeat", id_=frame_id) == {
        "type": "heartbeat.ack",
        "id": frame_id,
    }


class TestHeartbeat:
    @pytest.mark.parametrize("frame_id", [1, 0, -5, "abc", ""])
    async def test_ack_echoes_the_id(self, alice: Any, frame_id: Any) -> None:
        await alice.send({"type": "heartbeat", "id": frame_id})

        assert await alice.recv() == {"type": "heartbeat.ack", "id": frame_id}

    async def test_without_id(self, alice: Any) -> None:
        await alice.send({"type": "heartbeat"})

        assert await alice.recv() == {"type": "heartbeat.ack", "id": None}

    async def test_long_string_id_is_truncated(self, alice: Any) -> None:
        await alice.send({"type": "heartbeat", "id": "x" * 1000})

        assert await alice.recv() == {"type": "heartbeat.ack", "id": "x" * 128}

    async def test_refreshes_presence(self, alice: Any, r: redis.Redis) -> None:
        k, sid = user_keys(alice.hello["user"]["id"]), alice.hello["session_id"]
        assert r.zadd(k.conns, {sid: 1}, xx=True, ch=True) == 1  # as if it had lapsed long ago
        started = store.now_ms()

        await alice.request("heartbeat", id_=1)

        ttl_ms = alice.hello["presence_ttl"] * 1000
        assert (r.zscore(k.conns, sid) or 0) >= started + ttl_ms
        assert int(r.hget(k.conn(sid), "exp") or 0) >= started + ttl_ms


ERROR_CASES = [
    pytest.param("{not json", "bad_json", None, id="invalid-json"),
    pytest.param('{"type": "heartbeat"', "bad_json", None, id="truncated-json"),
    pytest.param("[1, 2]", "bad_frame", None, id="array"),
    pytest.param('"heartbeat"', "bad_frame", None, id="string"),
    pytest.param("null", "bad_frame", None, id="null"),
    pytest.param('{"id": 3}', "bad_frame", 3, id="no-type"),
    pytest.param('{"type": 5, "id": 4}', "bad_frame", 4, id="type-not-string"),
    pytest.param('{"type": "", "id": 5}', "bad_frame", 5, id="empty-type"),
    pytest.param('{"type": "heartbeat", "id": 1.5}', "bad_frame", None, id="float-id"),
    pytest.param('{"type": "heartbeat", "id": true}', "bad_frame", None, id="bool-id"),
    pytest.param('{"type": "heartbeat", "id": [1]}', "bad_frame", None, id="list-id"),
    pytest.param('{"type": "no.such.type", "id": 9}', "unknown_type", 9, id="unknown"),
    pytest.param('{"type": "HEARTBEAT", "id": 9}', "unknown_type", 9, id="wrong-case"),
    pytest.param(
        '{"type": "presence.list", "id": "d", "data": [1]}', "invalid_payload", "d", id="data-list"
    ),
    pytest.param(
        '{"type": "heartbeat", "id": "s", "data": "x"}', "invalid_payload", "s", id="data-string"
    ),
]


class TestErrors:
    @pytest.mark.parametrize(("text", "code", "frame_id"), ERROR_CASES)
    async def test_error_frame_and_connection_stays_open(
        self, alice: Any, text: str, code: str, frame_id: Any
    ) -> None:
        await alice.send_raw(text=text)

        error = await alice.recv()
        assert set(error) == {"type", "id", "code", "message"}
        assert (error["type"], error["id"], error["code"]) == ("error", frame_id, code)
        assert isinstance(error["message"], str)
        assert error["message"]
        await assert_still_open(alice)

    async def test_empty_text_frame_is_bad_json(self, alice: Any) -> None:
        await alice.send_raw(text="")

        error = await alice.recv()
        assert (error["type"], error["code"], error["id"]) == ("error", "bad_json", None)
        await assert_still_open(alice)

    @pytest.mark.parametrize("payload", [b'{"type": "heartbeat", "id": 1}', b"", b"\x00\xff"])
    async def test_binary_frame_is_bad_frame(self, alice: Any, payload: bytes) -> None:
        await alice.send_raw(data=payload)

        error = await alice.recv()
        assert (error["type"], error["code"], error["id"]) == ("error", "bad_frame", None)
        await assert_still_open(alice)

    @pytest.mark.parametrize(
        ("type_", "data", "field"),
        [
            ("room.join", {}, "room"),
            ("room.join", {"room": ""}, "room"),
            ("room.join", {"room": "has space"}, "room"),
            ("room.join", {"room": "a/b"}, "room"),
            ("room.join", {"room": "x" * 65}, "room"),
            ("room.join", {"room": 5}, "room"),
            ("room.leave", {"room": "é"}, "room"),
            ("presence.list", {"room": "bad room"}, "room"),
            ("status.set", {"status": "sleeping"}, "status"),
            ("status.set", {}, "status"),
        ],
    )
    async def test_invalid_payload_names_the_field(
        self, alice: Any, type_: str, data: dict[str, Any], field: str
    ) -> None:
        reply = await alice.request(type_, data, id_=77)

        assert (reply["type"], reply["id"], reply["code"]) == ("error", 77, "invalid_payload")
        assert reply["message"].startswith(f"{field}:"), reply["message"]
        await assert_still_open(alice)

    async def test_data_must_be_an_object(self, alice: Any) -> None:
        await alice.send({"type": "presence.list", "id": 1, "data": "lobby"})

        error = await alice.recv()
        assert error["code"] == "invalid_payload"
        assert "data" in error["message"]

    async def test_null_data_means_no_data(self, alice: Any) -> None:
        reply = await alice.request("presence.list", None, id_=3)
        await alice.send({"type": "presence.list", "id": 4, "data": None})

        assert reply["type"] == "reply"
        assert (await alice.recv())["type"] == "reply"

    async def test_unknown_type_is_not_echoed_in_full(self, alice: Any) -> None:
        await alice.send({"type": "a" * 500, "id": 1})

        error = await alice.recv()
        assert error["code"] == "unknown_type"
        assert len(error["message"]) < 200

    async def test_errors_are_counted_for_the_stats(self, alice: Any, r: redis.Redis) -> None:
        await alice.send_raw(text="{")
        await alice.recv()
        await alice.send({"type": "nope"})
        await alice.recv()
        # Counters ride along with the next heartbeat batch.
        await assert_still_open(alice)

        stats = stats_sum(r)  # every shard's: counters ride with the batch's first section
        assert stats["err:bad_json"] == 1
        assert stats["err:unknown_type"] == 1
        assert "msg:nope" not in stats  # clients cannot invent counter fields


class TestIdentity:
    async def test_frame_fields_cannot_change_the_user(
        self, ws_client: WSFactory, auser_factory: UserFactory, alice: Any, r: redis.Redis
    ) -> None:
        bob_user = await auser_factory("bob")
        bob = await ws_client(bob_user)
        await alice.recv_until(lambda f: f.get("event") == "join")
        spoof = {"id": alice.hello["user"]["id"], "username": "alice"}

        await bob.send(
            {
                "type": "status.set",
                "id": 1,
                "user": spoof,
                "user_id": spoof["id"],
                "session_id": alice.hello["session_id"],
                "data": {"status": "busy", "user": spoof, "user_id": spoof["id"]},
            }
        )

        event = await alice.recv_until(lambda f: f.get("type") == "presence")
        assert event["event"] == "status"
        assert event["user"] == {"id": bob_user.pk, "username": "bob"}
        assert r.hget(user_keys(bob_user.pk).user(bob_user.pk), "status") == "busy"
        assert r.hget(user_keys(spoof["id"]).user(spoof["id"]), "status") == "online"

    async def test_listing_shows_the_authenticated_user(
        self, alice: Any, auser_factory: UserFactory
    ) -> None:
        await alice.send(
            {"type": "room.join", "id": 1, "data": {"room": "lobby", "user_id": 999}, "user": 999}
        )

        reply = await alice.recv_until(lambda f: f.get("type") == "reply")
        assert [u["id"] for u in reply["data"]["users"]] == [alice.hello["user"]["id"]]


def test_error_cases_are_valid_test_input() -> None:
    """Guard: the JSON cases above really are JSON (or really are not) as their ids say."""
    for case in ERROR_CASES:
        text, code = case.values[0], case.values[1]
        if code == "bad_json":
            with pytest.raises(ValueError):
                json.loads(str(text))
        else:
            json.loads(str(text))
