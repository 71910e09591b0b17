"""No frame can crash a connection: arbitrary input against a real consumer (hypothesis).

Each generated frame goes to one live connection through the full ASGI stack. The property:
the server answers with an error frame (or a reply) and the connection stays usable, or it
closes with a documented code and the connection is gone from presence at once. Never 1006
(the consumer died) or 1011, never a ghost.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from presence.handlers import registry
from tests.support.homes import user_keys

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(300)]

WSFactory = Callable[..., Awaitable[Any]]
UserFactory = Callable[..., Awaitable[Any]]

# Closes a frame may legitimately cause (docs/protocol.md): too big, flooding.
DOCUMENTED_FRAME_CLOSES = {1009, 4429}
TYPES = sorted(spec.type for spec in registry)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=5) | st.dictionaries(st.text(max_size=12), children, max_size=5)
    ),
    max_leaves=25,
)
frame_ids = st.none() | st.integers() | st.text(max_size=200) | json_values
well_typed = st.builds(
    lambda type_, data, id_: json.dumps({"type": type_, "data": data, "id": id_}),
    st.sampled_from(TYPES) | st.text(max_size=30),
    json_values,
    frame_ids,
)
nested = st.tuples(st.integers(1, 5000), st.sampled_from("[{")).map(
    lambda nd: (
        ("[" * nd[0] + "]" * nd[0]) if nd[1] == "[" else ('{"a":' * nd[0] + "1" + "}" * nd[0])
    )
)
nested_in_data = st.integers(1, 5000).map(
    lambda n: '{"type":"heartbeat","id":1,"data":{"x":' + "[" * n + "]" * n + "}}"
)
huge_numbers = st.integers(1, 20_000).map(
    lambda n: '{"type":"heartbeat","id":' + "9" * n + "}"
) | st.integers(300, 5000).map(lambda n: '{"type":"heartbeat","id":1e' + str(n) + "}")
with_surrogates = st.text(max_size=50).map(lambda s: '{"type":"' + s + "\ud800" + '"}')
texts = (
    well_typed
    | nested
    | nested_in_data
    | huge_numbers
    | with_surrogates
    | st.text(max_size=2000)
    | json_values.map(json.dumps)
    | st.just("NaN")
    | st.just('{"type":"heartbeat","id":NaN}')
)
frames = texts.map(lambda t: ("text", t)) | st.binary(max_size=500).map(lambda b: ("bytes", b))


class Probe:
    """One user's connection, reopened whenever a frame closed it."""

    def __init__(self, ws_client: WSFactory, user: Any, r: redis.Redis) -> None:
        self.ws_client, self.user, self.r = ws_client, user, r
        self.client: Any = None
        self.next_id = 10_000_000

    async def connected(self) -> Any:
        if self.client is None:
            self.client = await self.ws_client(self.user)
        return self.client

    async def throw(self, kind: str, payload: Any) -> None:
        client = await self.connected()
        sid = client.hello["session_id"]
        if kind == "text":
            await client.send_raw(text=payload)
        else:
            await client.send_raw(data=payload)
        # A heartbeat right behind it: its ack proves the connection survived, in order.
        self.next_id += 1
        probe_id = self.next_id
        await client.comm.send_to(text_data=json.dumps({"type": "heartbeat", "id": probe_id}))
        while True:
            out = await client.comm.receive_output(timeout=5)
            if out["type"] == "websocket.close":
                code = int(out.get("code", 1000))
                assert code in DOCUMENTED_FRAME_CLOSES, f"closed with {code} after {payload!r:.200}"
                await client.comm.disconnect(code=code)
                self.client = None
                # Gone from presence at once, not after a TTL.
                assert self.r.zscore(user_keys(self.user.pk).conns, sid) is None
                return
            assert out["type"] == "websocket.send", out
            frame = json.loads(out["text"])
            assert "Traceback" not in out["text"]
            if frame.get("id") == probe_id and frame["type"] == "heartbeat.ack":
                return
            # Anything before the ack answers the fuzzed frame: a reply, an event or an error.
            assert isinstance(frame.get("type"), str), frame


@pytest.fixture
async def probe(
    ws_client: WSFactory, auser_factory: UserFactory, r: redis.Redis, settings: Any
) -> Probe:
    # Hundreds of frames a second from one socket: the rate limit is not under test here.
    settings.PRESENCE_RATE_LIMIT = 1_000_000
    settings.PRESENCE_RATE_BURST = 1_000_000
    return Probe(ws_client, await auser_factory("fuzz"), r)


@settings(
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(frame=frames)
async def test_any_frame_gets_an_answer_or_a_documented_close(
    probe: Probe, frame: tuple[str, Any]
) -> None:
    await probe.throw(*frame)


async def test_after_the_storm_presence_matches_the_sockets(probe: Probe, r: redis.Redis) -> None:
    client = await probe.connected()
    for text in ("[" * 1000 + "]" * 1000, '{"type":"room.join","data":' + "[" * 3000 + "}"):
        await probe.throw("text", text)
    sid, k = client.hello["session_id"], user_keys(probe.user.pk)
    assert r.zscore(k.conns, sid) is not None  # still online: it is still open
    await client.close()
    assert r.zscore(k.conns, sid) is None
    assert r.zscore(k.users, str(probe.user.pk)) is None


class TestDeepNesting:
    """The finding: ~1 KB of nested JSON raised RecursionError out of the consumer (1006)."""

    @pytest.mark.parametrize(
        "text",
        [
            "[" * 1000 + "]" * 1000,
            '{"type":"heartbeat","data":{"x":' + "[" * 1000 + "]" * 1000 + "}}",
            '{"type":"heartbeat","data":' + '{"a":' * 1000 + "1" + "}" * 1001,
        ],
        ids=["top-level", "inside-data", "objects"],
    )
    async def test_is_an_error_frame_and_the_socket_stays(
        self, ws_client: WSFactory, auser_factory: UserFactory, text: str
    ) -> None:
        client = await ws_client(await auser_factory("alice"))
        await client.recv()  # her global join

        await client.send_raw(text=text)

        error = await client.recv()
        assert error["type"] == "error" and error["code"] == "bad_json", error
        assert "nests deeper than 32" in error["message"]
        assert await client.request("heartbeat", id_=7) == {"type": "heartbeat.ack", "id": 7}

    async def test_strings_full_of_brackets_are_not_nesting(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        client = await ws_client(await auser_factory("alice"))
        await client.recv()
        text = json.dumps({"type": "heartbeat", "id": 3, "data": {"note": "[[[{{{" * 500}})

        await client.send_raw(text=text)

        assert await client.recv() == {"type": "heartbeat.ack", "id": 3}

    async def test_a_long_number_is_refused_before_it_is_parsed(
        self, ws_client: WSFactory, auser_factory: UserFactory
    ) -> None:
        client = await ws_client(await auser_factory("alice"))
        await client.recv()

        await client.send_raw(text='{"type":"heartbeat","id":' + "9" * 5000 + "}")

        error = await client.recv()
        assert error["code"] == "bad_json" and "longer than 64 digits" in error["message"]


class TestConsumerFailure:
    async def test_a_consumer_that_fails_closes_1011_and_leaves_no_ghost(
        self, ws_client: WSFactory, auser_factory: UserFactory, r: redis.Redis
    ) -> None:
        """Not a frame: a channel-layer message no method handles (another app's bug)."""
        from channels.layers import get_channel_layer

        alice = await auser_factory("alice")
        client = await ws_client(alice)
        sid, k = client.hello["session_id"], user_keys(alice.pk)
        channel = r.hget(k.conn(sid), "channel")
        assert channel and r.zscore(k.conns, sid) is not None  # where the checks below look

        await get_channel_layer().send(channel, {"type": "no.such.handler"})

        code, _ = await client.recv_close(timeout=5, finish=False)
        assert code == 1011
        # Removed at once by the consumer's own cleanup (right after the close; the client
        # never finished the close handshake), not a TTL later by the sweep.
        deadline = asyncio.get_running_loop().time() + 2
        while r.zscore(k.conns, sid) is not None:
            assert asyncio.get_running_loop().time() < deadline, "still registered after 2 s"
            await asyncio.sleep(0.01)
        assert r.zscore(k.users, str(alice.pk)) is None
