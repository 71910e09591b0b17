"""Dispatch through a real connection: timeouts, exceptions, payloads, disabling, stats.

Handlers under test are registered on the project's registry for the duration of a test and
reached through the full ASGI stack (``ws_client``), with the private Redis behind it.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
from pydantic import BaseModel, Field

from presence import store
from presence.handlers import FrameError, HandlerContext, registry
from presence.handlers.lifecycle import CONTROL_POLL_INTERVAL
from presence.live.batching import get_writer
from tests.support.db import session_log_written

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.timeout(60)]


def live_stats() -> dict[str, str]:
    """The live counters of every shard, each read on its own node, added up (which shard's
    hash a batch lands in is the store's choice)."""
    total: dict[str, int] = {}
    for shard in store.all_shards():
        for name, value in store.client_for(shard).hgetall(store.keys(shard).stats).items():
            total[name] = total.get(name, 0) + int(value)
    return {name: str(value) for name, value in total.items()}


class EchoPayload(BaseModel):
    text: str
    count: int = Field(default=1, ge=1)


class Probe:
    """What the test handlers observed."""

    def __init__(self) -> None:
        self.cancelled = asyncio.Event()
        self.late_finished = False
        self.sync_thread: int | None = None


@pytest.fixture
def probe() -> Iterator[Probe]:
    """Registers the test handlers (``test.*``) and removes them afterwards."""
    p = Probe()

    @registry.handler("test.slow", timeout=0.2, version="1")
    async def slow(ctx: HandlerContext, data: Any) -> dict[str, Any]:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            p.cancelled.set()
            raise
        return {"slept": True}

    @registry.handler("test.swallow", timeout=0.2, version="1")
    async def swallow(ctx: HandlerContext, data: Any) -> dict[str, Any]:
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            pass  # a badly behaved handler: it finishes anyway, late
        p.late_finished = True
        return {"late": True}

    @registry.handler("test.boom", version="1")
    async def boom(ctx: HandlerContext, data: Any) -> None:
        raise RuntimeError("secret detail: db password is hunter2")

    @registry.handler("test.own_timeout", timeout=5, version="1")
    async def own_timeout(ctx: HandlerContext, data: Any) -> None:
        raise TimeoutError("an upstream call timed out")  # not our deadline: an error

    @registry.handler("test.refuse", version="1")
    async def refuse(ctx: HandlerContext, data: Any) -> None:
        raise FrameError("forbidden", "not in this room")

    @registry.handler("test.echo", payload=EchoPayload, version="1", reply_type="test.echoed")
    async def echo(ctx: HandlerContext, data: EchoPayload) -> dict[str, Any]:
        return {"text": data.text * data.count, "session": ctx.session_id, "user": ctx.user_id}

    @registry.handler("test.sync", version="1")
    def sync(ctx: HandlerContext, data: Any) -> dict[str, Any]:
        p.sync_thread = threading.get_ident()
        time.sleep(0.05)  # blocking is fine here: this runs in a worker thread
        return {"sync": True}

    types = ["test.slow", "test.swallow", "test.boom", "test.own_timeout", "test.refuse"]
    types += ["test.echo", "test.sync"]
    yield p
    for t in types:
        registry.unregister(t)
    registry.set_disabled(frozenset())


@pytest.fixture
async def alice(ws_client: Callable[..., Any], auser_factory: Callable[..., Any]) -> Any:
    return await ws_client(await auser_factory("alice"))


async def error_of(
    client: Any, type_: str, data: dict[str, Any] | None = None, id_: int = 1
) -> Any:
    reply = await client.request(type_, data or {}, id_=id_)
    assert reply["type"] == "error", reply
    return reply


class TestTimeout:
    async def test_timeout_cancels_the_handler_and_reports(self, alice: Any, probe: Probe) -> None:
        started = time.monotonic()
        reply = await error_of(alice, "test.slow", id_=7)
        elapsed = time.monotonic() - started
        assert (reply["code"], reply["id"]) == ("handler_timeout", 7)
        assert "0.2 s" in reply["message"]
        assert elapsed < 1.0
        await asyncio.wait_for(probe.cancelled.wait(), 1)
        # The connection is still open and served.
        assert (await alice.request("heartbeat", id_=8))["type"] == "heartbeat.ack"

    async def test_a_handler_that_swallows_cancellation_still_times_out(
        self, alice: Any, probe: Probe
    ) -> None:
        reply = await error_of(alice, "test.swallow")
        assert reply["code"] == "handler_timeout"
        assert probe.late_finished

    async def test_timeout_error_raised_by_the_handler_is_an_error(
        self, alice: Any, probe: Probe
    ) -> None:
        assert (await error_of(alice, "test.own_timeout"))["code"] == "handler_error"

    async def test_timeouts_are_counted(self, alice: Any, probe: Probe, r: redis.Redis) -> None:
        await error_of(alice, "test.slow")
        await get_writer().flush()
        stats = live_stats()
        assert stats["h:test.slow:timeouts"] == "1"
        assert stats["h:test.slow:calls"] == "1"
        assert stats["err:handler_timeout"] == "1"
        assert "h:test.slow:errors" not in stats


class TestExceptionIsolation:
    async def test_failing_handler_does_not_affect_the_connection(
        self, alice: Any, probe: Probe, caplog: pytest.LogCaptureFixture, r: redis.Redis
    ) -> None:
        caplog.set_level(logging.ERROR, logger="presence.handlers.registry")
        reply = await error_of(alice, "test.boom", id_="b1")
        assert (reply["code"], reply["id"]) == ("handler_error", "b1")
        assert "hunter2" not in reply["message"]
        assert "Traceback" not in reply["message"]
        assert "RuntimeError" not in reply["message"]

        # The same connection keeps being served, in order, by other handlers.
        echoed = await alice.request("test.echo", {"text": "hi", "count": 2}, id_=2)
        assert echoed == {
            "type": "test.echoed",
            "id": 2,
            "data": {
                "text": "hihi",
                "session": alice.hello["session_id"],
                "user": echoed["data"]["user"],
            },
        }
        assert (await alice.request("presence.list", id_=3))["data"]["count"] == 1
        assert (await error_of(alice, "test.boom", id_=4))["code"] == "handler_error"
        assert (await alice.request("heartbeat", id_=5))["type"] == "heartbeat.ack"

        # Logged with the session id, the message type and the traceback.
        (record, *_) = [r for r in caplog.records if "test.boom" in r.getMessage()]
        assert alice.hello["session_id"] in record.getMessage()
        assert record.exc_info is not None
        assert "hunter2" in caplog.text and "Traceback" in caplog.text

        await get_writer().flush()
        stats = live_stats()
        assert stats["h:test.boom:errors"] == "2"
        assert stats["h:test.boom:calls"] == "2"
        assert stats["h:test.echo:calls"] == "1"
        assert "h:test.echo:errors" not in stats

    async def test_frame_errors_raised_by_handlers_pass_through(
        self, alice: Any, probe: Probe
    ) -> None:
        reply = await error_of(alice, "test.refuse")
        assert (reply["code"], reply["message"]) == ("forbidden", "not in this room")


class TestPayload:
    async def test_invalid_payload_names_the_field(self, alice: Any, probe: Probe) -> None:
        reply = await error_of(alice, "test.echo", {"text": "x", "count": 0})
        assert reply["code"] == "invalid_payload"
        assert reply["message"].startswith("count:")
        missing = await error_of(alice, "test.echo", {"count": 2}, id_=2)
        assert missing["message"].startswith("text:")

    async def test_sync_handler_runs_off_the_event_loop(self, alice: Any, probe: Probe) -> None:
        reply = await alice.request("test.sync")
        assert reply == {"type": "reply", "id": 1, "data": {"sync": True}}
        assert probe.sync_thread is not None
        assert probe.sync_thread != threading.get_ident()  # the loop runs in this thread


class TestDisabled:
    async def test_published_disable_reaches_the_connection(self, alice: Any, probe: Probe) -> None:
        assert (await alice.request("test.echo", {"text": "a"}))["type"] == "test.echoed"
        # What the admin action does after its commit (see test_handler_admin.py).
        store.publish_disabled_handlers(store.get_redis(), lambda: ["test.echo", "heartbeat"])
        await asyncio.sleep(CONTROL_POLL_INTERVAL * 2 + 0.2)
        reply = await error_of(alice, "test.echo", {"text": "a"}, id_=2)
        assert reply["code"] == "handler_disabled"
        # Disabled wins over payload validation: nothing of the frame is looked at.
        assert (await error_of(alice, "test.echo", {"count": -1}, id_=3))["code"] == (
            "handler_disabled"
        )
        # Core handlers are never disabled, even when the set names them.
        assert (await alice.request("heartbeat", id_=4))["type"] == "heartbeat.ack"

        store.publish_disabled_handlers(store.get_redis(), lambda: [])
        await asyncio.sleep(CONTROL_POLL_INTERVAL * 2 + 0.2)
        assert (await alice.request("test.echo", {"text": "a"}, id_=5))["type"] == "test.echoed"

    async def test_unknown_type(self, alice: Any) -> None:
        reply = await error_of(alice, "nobody.handles.this")
        assert reply["code"] == "unknown_type"


class TestChatTyping:
    async def test_typing_is_broadcast_to_the_room(
        self, ws_client: Callable[..., Any], auser_factory: Callable[..., Any]
    ) -> None:
        alice = await ws_client(await auser_factory("alice"))
        bob = await ws_client(await auser_factory("bob"))
        for client in (alice, bob):
            assert (await client.request("room.join", {"room": "lobby"}))["type"] == "reply"

        reply = await alice.request("chat.typing", {"room": "lobby"}, id_=2)
        assert reply == {"type": "reply", "id": 2, "data": {"room": "lobby"}}
        typing = await bob.recv_until(lambda f: f["type"] == "chat.typing")
        assert typing["room"] == "lobby"
        assert typing["user"]["username"] == "alice"
        assert typing["typing"] is True

        await alice.request("chat.typing", {"room": "lobby", "typing": False}, id_=3)
        stopped = await bob.recv_until(lambda f: f["type"] == "chat.typing")
        assert stopped["typing"] is False

    async def test_typing_needs_membership(self, alice: Any) -> None:
        reply = await error_of(alice, "chat.typing", {"room": "elsewhere"})
        assert reply["code"] == "invalid_payload"
        assert reply["message"].startswith("room:")


class TestHotPathStats:
    async def test_calls_and_latency_counted_in_redis_without_sql(
        self,
        ws_client: Callable[..., Any],
        auser_factory: Callable[..., Any],
        django_db_blocker: Any,
        r: redis.Redis,
    ) -> None:
        alice = await ws_client(await auser_factory("alice"))
        await alice.request("room.join", {"room": "lobby"})
        # The connect's session row is written behind on asgiref's sync thread: a write still
        # open when the blocker starts could not restore autocommit (its connection stays
        # outside autocommit for the tests after this one), so it is awaited first.
        await session_log_written()
        # From here on any SQL, in any thread, raises: the handler would answer handler_error.
        with django_db_blocker.block():
            for i in range(5):
                reply = await alice.request("chat.typing", {"room": "lobby"}, id_=10 + i)
                assert reply["type"] == "reply", reply
            await get_writer().flush()
        stats = live_stats()
        assert stats["h:chat.typing:calls"] == "5"
        assert stats["msg:chat.typing"] == "5"
        latency = {k: int(v) for k, v in stats.items() if k.startswith("h:chat.typing:lat:")}
        assert sum(latency.values()) == 5
        assert all(
            k.rsplit(":", 1)[1] in {*map(repr, store.LATENCY_BUCKETS), "inf"} for k in latency
        )
