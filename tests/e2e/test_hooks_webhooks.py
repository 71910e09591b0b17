"""Acceptance of the server-side hooks (issue 11): real uvicorn servers, a real
``presence_consume`` process (the log readers: routing and delivery), real Celery worker and
beat processes (the sweep; the admin's replay), a real HTTP receiver started here
(tests/support/webhook_receiver.py).

The endpoint is the one configured from the environment (PRESENCE_WEBHOOK_URL/SECRET), so
these also cover that path. Intervals are short (env) to keep each test within seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import Client

from presence import store
from presence.models import DeliveryState, WebhookDelivery, WebhookEndpoint, WebhookEvent
from tests.support.celery import CeleryProcess
from tests.support.consume import ConsumeProcess
from tests.support.e2e_clients import recv, request, token_for, ws
from tests.support.servers import ASGIServer
from tests.support.webhook_receiver import Receiver

from .test_celery_tasks import until

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True)]

SECRET = "acceptance-secret"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.stop()


def fast(receiver: Receiver, **extra: str) -> dict[str, str]:
    """Environment of the servers, workers and beat: short intervals, the receiver's URL."""
    env = {
        "PRESENCE_WEBHOOK_URL": receiver.url,
        "PRESENCE_WEBHOOK_SECRET": SECRET,
        "PRESENCE_HOOKS_INTERVAL": "0.3",
        "PRESENCE_HOOKS_BACKOFF_BASE": "0.3",
        "PRESENCE_HOOKS_BACKOFF_MAX": "1",
        "PRESENCE_WEBHOOK_TIMEOUT": "2",
        "PRESENCE_WEBHOOK_RUN_BUDGET": "1",
        # The receiver is on loopback: a deliberate internal receiver (docs/hooks.md).
        "PRESENCE_WEBHOOK_ALLOWED_HOSTS": "127.0.0.1",
        # The receiver is local: a proxy from the environment must not be used.
        "http_proxy": "",
        "HTTP_PROXY": "",
        "no_proxy": "127.0.0.1,localhost",
    }
    env.update(extra)
    return env


Stack = Callable[..., tuple[ASGIServer, ConsumeProcess]]


@pytest.fixture
def start_all(
    asgi_server: Callable[..., ASGIServer],
    celery_worker_process: Callable[..., CeleryProcess],
    consume_process: Callable[..., ConsumeProcess],
) -> Stack:
    """Start the log readers, a worker, a beat and a web server, all with ``env``: returns
    (server, the readers' process)."""

    def start(env: dict[str, str]) -> tuple[ASGIServer, ConsumeProcess]:
        consume = consume_process(env=env)
        celery_worker_process(env=env)
        celery_worker_process(env=env, beat=True)
        return asgi_server(env=env), consume

    return start


def of_user(receiver: Receiver, uid: int) -> list[dict[str, Any]]:
    return [e for e in receiver.events() if e["user"]["id"] == uid]


def position(event: dict[str, Any]) -> tuple[int, ...]:
    """The event-log position as numbers, (shard, ms, seq): ids do not sort as strings."""
    # "<shard>/<ms>-<seq>": a user's user.* events are on the user's shard, a room's room.*
    # events on the room's (the positions of two shards are not comparable).
    shard, _, stream_id = event["position"].partition("/")
    return (int(shard), *(int(x) for x in stream_id.split("-")))


def types(events: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in events]


async def test_two_tabs_give_one_online_and_one_offline_after_the_last_close(
    start_all: Stack,
    auser_factory: Callable[..., Awaitable[Any]],
    receiver: Receiver,
) -> None:
    env = fast(receiver)
    server, _ = start_all(env)
    alice = await auser_factory("alice")

    async with ws(server, await token_for(server, alice)) as tab1:
        await recv(tab1)
        async with ws(server, await token_for(server, alice)) as tab2:
            await recv(tab2)
            await until(lambda: of_user(receiver, alice.pk), 10, "user.online")
        # One tab closed: the user is still online, so no offline (give the hooks a few runs).
        await asyncio.sleep(1.5)
        assert types(of_user(receiver, alice.pk)) == ["user.online"]
    await until(lambda: len(of_user(receiver, alice.pk)) >= 2, 10, "user.offline")
    await asyncio.sleep(1.0)  # nothing more arrives

    events = of_user(receiver, alice.pk)
    assert types(events) == ["user.online", "user.offline"]
    assert events[1]["reason"] == "closed" and events[1]["user"]["username"] == "alice"
    assert position(events[0]) < position(events[1])
    assert receiver.delivered() and all(req.signed_with(SECRET) for req in receiver.delivered())
    assert not any(req.signed_with("another secret") for req in receiver.delivered())


async def test_offline_of_a_killed_web_process_arrives_after_the_sweep(
    start_all: Stack,
    auser_factory: Callable[..., Awaitable[Any]],
    receiver: Receiver,
) -> None:
    env = fast(
        receiver,
        PRESENCE_TTL="2",
        PRESENCE_HEARTBEAT_INTERVAL="0.5",
        PRESENCE_SWEEP_INTERVAL="0.5",
    )
    server, _ = start_all(env)
    alice = await auser_factory("alice")

    with contextlib.suppress(Exception):  # the socket dies with its server
        async with ws(server, await token_for(server, alice)) as conn:
            await recv(conn)
            await until(lambda: of_user(receiver, alice.pk), 10, "user.online")
            killed_at = time.time()
            server.kill()  # SIGKILL: no close, no leave from the server itself
    await until(lambda: len(of_user(receiver, alice.pk)) >= 2, 15, "user.offline")

    online, offline = of_user(receiver, alice.pk)
    assert (online["type"], offline["type"], offline["reason"]) == (
        "user.online",
        "user.offline",
        "expired",
    )
    # It happened when the connection lapsed (its last heartbeat + TTL), not at the sweep.
    assert offline["at_ms"] / 1000 <= killed_at + 2 + 0.5
    assert all(req.signed_with(SECRET) for req in receiver.delivered())


async def test_receiver_down_for_a_while_gets_every_event_in_order_per_user(
    start_all: Stack,
    auser_factory: Callable[..., Awaitable[Any]],
    receiver: Receiver,
) -> None:
    env = fast(receiver)
    server, _ = start_all(env)
    alice, bob = await auser_factory("alice"), await auser_factory("bob")
    receiver.stop()  # connections refused from here on

    for _ in range(2):
        for user in (alice, bob):
            async with ws(server, await token_for(server, user)) as conn:
                await recv(conn)
                reply = await request(
                    conn, {"type": "room.join", "id": 1, "data": {"room": "lobby"}}
                )
                assert reply["type"] == "reply", reply
    await until(
        lambda: WebhookDelivery.objects.filter(outcome="failed").count() >= 2,
        15,
        "failed deliveries while the receiver is down",
    )
    receiver.start()  # back, on the same port

    # Log order holds per stream (docs/hooks.md, "Ordering"): the user's events are on the
    # user's shard, the lobby's on the lobby's, and the two are not ordered against each
    # other unless both homes are one shard (then a close's user half comes first).
    user_visit = ["user.online", "user.offline"]
    room_visit = ["room.occupied", "room.join", "room.leave", "room.vacated"]
    one_visit = ["user.online", "room.occupied", "room.join"]
    one_visit += ["user.offline", "room.leave", "room.vacated"]
    expected = one_visit * 2
    await until(lambda: len(of_user(receiver, bob.pk)) >= len(expected), 20, "bob's events")
    await until(lambda: len(of_user(receiver, alice.pk)) >= len(expected), 5, "alice's events")

    lobby = store.room_home("lobby")
    for user in (alice, bob):
        events = of_user(receiver, user.pk)
        home = store.user_home(user.pk)
        of_user_scope = [e for e in events if e["type"].startswith("user.")]
        of_room_scope = [e for e in events if e["type"].startswith("room.")]
        assert types(of_user_scope) == user_visit * 2, user.username
        assert types(of_room_scope) == room_visit * 2, user.username
        assert len(events) == len(expected), user.username
        if home == lobby:
            assert types(events) == expected, user.username
        assert {position(e)[0] for e in of_user_scope} == {home}
        assert {position(e)[0] for e in of_room_scope} == {lobby}
        for shard in {home, lobby}:  # delivered in each stream's order
            positions = [position(e) for e in events if position(e)[0] == shard]
            assert positions == sorted(positions), user.username
        assert len({e["id"] for e in events}) == len(events)  # each once: no duplicate POST
    await until(
        lambda: not WebhookEvent.objects.exclude(state=DeliveryState.DELIVERED).exists(),
        5,
        "every event marked delivered",
    )


async def test_reader_killed_mid_delivery_is_delivered_again(
    start_all: Stack,
    consume_process: Callable[..., ConsumeProcess],
    auser_factory: Callable[..., Awaitable[Any]],
    receiver: Receiver,
) -> None:
    env = fast(receiver, PRESENCE_WEBHOOK_TIMEOUT="4")
    server, consume = start_all(env)
    alice = await auser_factory("alice")
    receiver.delay = 3.0  # the first POST is held open: the reader's delivery is inside it

    async with ws(server, await token_for(server, alice)) as conn:
        await recv(conn)
        await until(receiver.arrived.is_set, 10, "the first POST")
        consume.kill()  # SIGKILL mid-POST
        killed_at = time.monotonic()
        receiver.delay = 0.0
        consume_process(env=env)
        # The dead delivery's lock expires (budget + timeout + slack) and the event goes out
        # again from the new process.
        await until(
            lambda: WebhookEvent.objects.filter(state=DeliveryState.DELIVERED).exists(),
            20,
            "delivered by the new reader",
        )
    redelivered_after = time.monotonic() - killed_at
    online = [e for e in of_user(receiver, alice.pk) if e["type"] == "user.online"]
    # The held request was answered too (the receiver saw it), so at least twice: at least once.
    assert len(online) >= 2 and len({e["id"] for e in online}) == 1
    assert redelivered_after < 20
    assert await WebhookDelivery.objects.filter(outcome="delivered").acount() >= 1


async def test_always_failing_endpoint_ends_in_dead_letters_and_replay_delivers(
    start_all: Stack,
    auser_factory: Callable[..., Awaitable[Any]],
    admin_user: Any,
    receiver: Receiver,
) -> None:
    env = fast(receiver, PRESENCE_WEBHOOK_RETRY_FOR="1.5", PRESENCE_HOOKS_BACKOFF_MAX="0.5")
    server, _ = start_all(env)
    alice = await auser_factory("alice")
    receiver.status = 500

    async with ws(server, await token_for(server, alice)) as conn:
        await recv(conn)
        await until(
            lambda: WebhookEvent.objects.filter(state=DeliveryState.DEAD).exists(),
            15,
            "a dead letter",
        )
    dead = await sync_to_async(list)(WebhookEvent.objects.filter(state=DeliveryState.DEAD))
    assert dead[0].type == "user.online" and dead[0].attempts >= 2
    assert all(r.status == 500 for r in receiver.requests)
    failed = await WebhookDelivery.objects.filter(outcome="failed").acount()
    assert failed >= 2

    # Replayed from the admin, as an operator would.
    receiver.status = 200

    def replay() -> int:
        client = Client()
        client.force_login(admin_user)
        page = client.get("/admin/presence/webhookevent/?state__exact=dead")
        assert page.status_code == 200 and dead[0].event_id in page.content.decode()
        response = client.post(
            "/admin/presence/webhookevent/",
            {"action": "replay", "_selected_action": [d.pk for d in dead]},
            follow=True,
        )
        assert "Queued" in response.content.decode()
        return response.status_code

    assert await sync_to_async(replay)() == 200
    await until(
        lambda: any(e["id"] == dead[0].event_id for e in receiver.events()),
        10,
        "the replayed event",
    )
    await until(
        lambda: WebhookEvent.objects.filter(pk=dead[0].pk, state=DeliveryState.DELIVERED).exists(),
        5,
        "the replayed event marked delivered",
    )


async def test_a_slow_endpoint_does_not_delay_another(
    start_all: Stack,
    auser_factory: Callable[..., Awaitable[Any]],
    receiver: Receiver,
) -> None:
    env = fast(receiver, PRESENCE_WEBHOOK_TIMEOUT="5")
    fast_one = Receiver()
    try:
        await WebhookEndpoint.objects.acreate(name="fast", url=fast_one.url, secret="other")
        server, _ = start_all(env)
        alice = await auser_factory("alice")
        receiver.delay = 4.0  # the environment's endpoint answers after 4 s

        async with ws(server, await token_for(server, alice)) as conn:
            started = time.monotonic()
            await recv(conn)
            await until(lambda: of_user(fast_one, alice.pk), 10, "the fast endpoint's event")
            fast_after = time.monotonic() - started
            await until(lambda: of_user(receiver, alice.pk), 10, "the slow endpoint's event")
            slow_after = time.monotonic() - started
        # Served side by side: the fast one did not wait for the slow one's 4 s answer.
        assert slow_after - fast_after > 2.5, (fast_after, slow_after)
        assert all(req.signed_with("other") for req in fast_one.delivered())
    finally:
        fast_one.stop()
