"""The leave grace window (PRESENCE_LEAVE_GRACE) against real servers, a real Celery worker
and beat (the hooks and the sweep), and a real webhook receiver.

Observers: a protocol v1 socket and a protocol v2 socket of other users, both in the room,
recording every frame; the receiver records the hooks. A reload within the window (cookie
and token clients) shows nobody a leave or a join and fires no hook; a drop longer than the
window gives exactly one leave and one ``user.offline``; a kick leaves at once; a web process
killed with SIGKILL during the window still ends in exactly one leave, after TTL + sweep.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from websockets.asyncio.client import ClientConnection

from sessions_app.actions import do_kick_session
from sessions_app.models import ConnectionSession
from tests.support.celery import CeleryProcess
from tests.support.consume import ConsumeProcess
from tests.support.e2e_clients import recv, request, session_id_for, token_for, ws
from tests.support.servers import ASGIServer
from tests.support.webhook_receiver import Receiver

from .test_celery_tasks import until
from .test_hooks_webhooks import Stack, fast, of_user, types

pytestmark = [pytest.mark.slow, pytest.mark.django_db(transaction=True), pytest.mark.timeout(150)]

GRACE = 3.0
UserFactory = Callable[..., Awaitable[Any]]


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.stop()


@pytest.fixture
def start_all(
    asgi_server: Callable[..., ASGIServer],
    celery_worker_process: Callable[..., CeleryProcess],
    consume_process: Callable[..., ConsumeProcess],
) -> Stack:
    """The log readers (the hooks), a worker, a beat (the sweep) and a web server, all with
    ``env``: returns (server, the readers' process)."""

    def start(env: dict[str, str]) -> tuple[ASGIServer, ConsumeProcess]:
        consume = consume_process(env=env)
        celery_worker_process(env=env)
        celery_worker_process(env=env, beat=True)
        return asgi_server(env=env), consume

    return start


class Observer:
    """A socket of another user in the room that records every frame it receives."""

    def __init__(self, conn: ClientConnection) -> None:
        self.conn, self.frames = conn, []  # type: list[dict[str, Any]]
        loop = asyncio.get_running_loop()
        self.tasks = [loop.create_task(self._read()), loop.create_task(self._beat())]

    async def _read(self) -> None:
        with contextlib.suppress(Exception):
            async for text in self.conn:
                self.frames.append(json.loads(text))

    async def _beat(self) -> None:
        """Heartbeats, so the observer outlives a short TTL."""
        with contextlib.suppress(Exception):
            while True:
                await asyncio.sleep(0.4)
                await self.conn.send(json.dumps({"type": "heartbeat"}))

    def about(self, uid: int) -> list[tuple[str, str | None]]:
        """(join/leave, room) of ``uid`` in what it saw: v1 events and v2 diffs alike."""
        seen: list[tuple[str, str | None]] = []
        for f in self.frames:
            if f["type"] == "presence" and f["user"]["id"] == uid and f["event"] != "status":
                seen.append((f["event"], f["room"]))
            elif f["type"] == "presence.diff":
                for kind in ("join", "leave"):
                    if any(u["id"] == uid for u in f.get(kind, [])):
                        seen.append((kind, f.get("room")))
        return seen


@contextlib.asynccontextmanager
async def observers(server: ASGIServer, bob: Any, carol: Any) -> AsyncIterator[list[Observer]]:
    """bob (v1) and carol (v2), both in ``lobby``, carol synced on everyone too."""
    async with (
        ws(server, await token_for(server, bob)) as v1,
        ws(server, await token_for(server, carol), subprotocols=["presence.v2"]) as v2,
    ):
        for conn in (v1, v2):
            assert (await recv(conn))["type"] == "hello"
            reply = await request(conn, {"type": "room.join", "id": 1, "data": {"room": "lobby"}})
            assert reply["type"] == "reply"
        await request(v2, {"type": "presence.sync", "id": 2, "data": {"room": None}})
        watchers = [Observer(v1), Observer(v2)]
        try:
            yield watchers
        finally:
            for w in watchers:
                for task in w.tasks:
                    task.cancel()


async def open_alice(server: ASGIServer, alice: Any, *, cookie: bool) -> Any:
    """A socket of alice in ``lobby`` (context manager), by session cookie or by token."""
    if cookie:
        session = await sync_to_async(session_id_for)(alice)
        return ws(server, session=session)
    return ws(server, await token_for(server, alice))


async def in_lobby(conn: ClientConnection) -> str:
    hello = await recv(conn)
    assert hello["type"] == "hello", hello
    await request(conn, {"type": "room.join", "id": 1, "data": {"room": "lobby"}})
    return str(hello["session_id"])


def grace_env(receiver: Receiver, **extra: str) -> dict[str, str]:
    return fast(receiver, PRESENCE_LEAVE_GRACE=str(GRACE), **extra)


async def test_a_reload_within_the_window_shows_nothing_and_fires_no_hook(
    start_all: Stack, auser_factory: UserFactory, receiver: Receiver
) -> None:
    server, _ = start_all(grace_env(receiver))
    alice, bob, carol = [await auser_factory(n) for n in ("alice", "bob", "carol")]

    async with observers(server, bob, carol) as watching:
        async with await open_alice(server, alice, cookie=True) as first:
            await in_lobby(first)
            await until(lambda: of_user(receiver, alice.pk), 10, "user.online")
        # Reloads: a cookie page, then a token client, each back within the window.
        for cookie in (True, False):
            async with await open_alice(server, alice, cookie=cookie) as again:
                await in_lobby(again)
                await asyncio.sleep(0.3)
        async with await open_alice(server, alice, cookie=True) as last:
            await in_lobby(last)
            await asyncio.sleep(GRACE + 2)  # past every window, hooks had many runs

            for w in watching:
                assert w.about(alice.pk) == [("join", "lobby"), ("join", None)] or w.about(
                    alice.pk
                ) == [("join", None), ("join", "lobby")], w.about(alice.pk)
            # Her first connect's hooks, and nothing from the reloads.
            assert sorted(types(of_user(receiver, alice.pk))) == ["room.join", "user.online"]


async def test_a_drop_longer_than_the_window_leaves_once(
    start_all: Stack, auser_factory: UserFactory, receiver: Receiver
) -> None:
    server, _ = start_all(grace_env(receiver))
    alice, bob, carol = [await auser_factory(n) for n in ("alice", "bob", "carol")]

    async with observers(server, bob, carol) as watching:
        async with await open_alice(server, alice, cookie=False) as conn:
            await in_lobby(conn)
            await until(lambda: of_user(receiver, alice.pk), 10, "user.online")
        closed_at = time.monotonic()
        await until(lambda: "user.offline" in types(of_user(receiver, alice.pk)), GRACE + 10)
        waited = time.monotonic() - closed_at
        await asyncio.sleep(1.5)  # nothing more arrives

        for w in watching:
            leaves = [seen for seen in w.about(alice.pk) if seen[0] == "leave"]
            assert sorted(leaves, key=str) == [("leave", "lobby"), ("leave", None)], leaves
    events = types(of_user(receiver, alice.pk))
    assert sorted(events) == ["room.join", "room.leave", "user.offline", "user.online"]
    assert waited >= GRACE - 0.5  # held for the window, not at the close


async def test_a_kick_within_the_window_leaves_at_once(
    start_all: Stack, auser_factory: UserFactory, receiver: Receiver
) -> None:
    server, _ = start_all(grace_env(receiver))
    alice, bob, carol = [await auser_factory(n) for n in ("alice", "bob", "carol")]

    async with observers(server, bob, carol) as watching:
        async with await open_alice(server, alice, cookie=False) as first:
            await in_lobby(first)
        async with await open_alice(server, alice, cookie=False) as again:  # a reload
            sid = await in_lobby(again)
            row = await until(
                lambda: ConnectionSession.objects.filter(id=sid, ended_at=None).first(), 10
            )
            kicked_at = time.monotonic()
            assert await sync_to_async(do_kick_session)(row)
            await until(
                lambda: all(("leave", None) in w.about(alice.pk) for w in watching),
                GRACE,
                "the leave",
            )
            took = time.monotonic() - kicked_at
    assert took < GRACE - 1  # at once, not after the window
    for w in watching:
        assert [s for s in w.about(alice.pk) if s[0] == "leave"].count(("leave", None)) == 1


async def test_a_killed_process_during_the_window_ends_in_one_leave_after_ttl_and_sweep(
    asgi_server: Callable[..., ASGIServer],
    start_all: Stack,
    auser_factory: UserFactory,
    receiver: Receiver,
) -> None:
    env = grace_env(
        receiver,
        PRESENCE_TTL="2",
        PRESENCE_HEARTBEAT_INTERVAL="0.5",
        PRESENCE_SWEEP_INTERVAL="0.5",
    )
    watched_from, _ = start_all(env)
    doomed = asgi_server(env=env)
    alice, bob, carol = [await auser_factory(n) for n in ("alice", "bob", "carol")]

    async with observers(watched_from, bob, carol) as watching:
        async with await open_alice(doomed, alice, cookie=False) as first:
            await in_lobby(first)
        with contextlib.suppress(Exception):  # the socket dies with its server
            async with await open_alice(doomed, alice, cookie=False) as again:  # a reload
                await in_lobby(again)
                doomed.kill()  # SIGKILL within the window: no close, no timer
        await until(lambda: "user.offline" in types(of_user(receiver, alice.pk)), 20)
        await asyncio.sleep(GRACE + 1.5)  # the held leaves are due by now: nothing more

        for w in watching:
            leaves = [seen for seen in w.about(alice.pk) if seen[0] == "leave"]
            assert sorted(leaves, key=str) == [("leave", "lobby"), ("leave", None)], leaves
    events = types(of_user(receiver, alice.pk))
    assert sorted(events) == ["room.join", "room.leave", "user.offline", "user.online"]
