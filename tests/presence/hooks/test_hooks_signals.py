"""presence.signals sent from the event log (presence/hooks/dispatch.py): real Redis (the
stream and the consumer group ``hooks``), the real database, real receivers connected here.
The run is the Celery task's body, called in this process."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from asgiref.sync import sync_to_async
from pytest_django.fixtures import Settings

from presence import signals, store
from presence.conf import app_settings
from presence.hooks import dispatch
from presence.hooks.events import HookEvent
from presence.jobs import groups as reader
from presence.models import HookFailure
from tests.support.hook_log import Log

pytestmark = pytest.mark.django_db(transaction=True)


class Receivers:
    """Records every event; raises for users in ``failing``."""

    def __init__(self) -> None:
        self.seen: list[HookEvent] = []
        self.failing: set[int] = set()
        self.offline: list[str] = []

    def on_any(self, sender: str, event: HookEvent, **kwargs: Any) -> None:
        self.seen.append(event)
        if event.user_id in self.failing:
            raise RuntimeError(f"receiver down for {event.user_id}")

    def on_offline(self, sender: str, event: HookEvent, **kwargs: Any) -> None:
        self.offline.append(event.id)

    def types(self, uid: int | None = None) -> list[str]:
        return [e.type for e in self.seen if uid is None or e.user_id == uid]


@pytest.fixture
def receivers() -> Iterator[Receivers]:
    rec = Receivers()
    signals.presence_event.connect(rec.on_any, weak=False)
    signals.user_offline.connect(rec.on_offline, weak=False)
    yield rec
    signals.presence_event.disconnect(rec.on_any)
    signals.user_offline.disconnect(rec.on_offline)


@pytest.fixture
def log(r: redis.Redis) -> Log:
    return Log(r)


class TestSending:
    def test_every_type_in_log_order_then_acknowledged(
        self, log: Log, receivers: Receivers
    ) -> None:
        log.join(1)
        log.open_close(1)
        log.join(1, "lobby", occupied=True)
        log.join(2, "lobby")
        log.status(1, "away")
        log.status(1, "away", room="lobby")  # the room copy of a status: no second event
        log.leave(2, "lobby", why="left")
        log.leave(1, "lobby", why="timeout", vacated=True)
        last = log.leave(1, why="timeout")

        report = dispatch.send_signals()

        assert receivers.types() == [
            "user.online",
            "room.occupied",
            "room.join",
            "room.join",
            "user.status",
            "room.leave",
            "room.leave",
            "room.vacated",
            "user.offline",
        ]
        offline = receivers.seen[-1]
        assert offline.id == f"{last}:user.offline" and offline.position == last
        assert offline.reason == "expired" and offline.room is None
        assert receivers.seen[1].room == "lobby" and receivers.seen[1].reason is None
        assert receivers.offline == [offline.id]  # the type's own signal too
        assert log.pending(store.HOOKS_GROUP) == 0
        assert report.events == 9 and report.entries == 10 and not report.failed

    def test_a_second_run_sends_nothing_again(self, log: Log, receivers: Receivers) -> None:
        log.join(1)
        dispatch.send_signals()
        dispatch.send_signals()

        assert receivers.types() == ["user.online"]

    def test_entries_a_killed_run_read_are_sent_by_the_next(
        self, r: redis.Redis, log: Log, receivers: Receivers
    ) -> None:
        log.join(1)
        log.leave(1)
        # A run that read both entries and died before acknowledging them.
        store.ensure_group(store.HOOKS_GROUP)
        read = store.read_group(store.HOOKS_GROUP, reader.CONSUMER, count=10)
        assert len(read) == 2 and log.pending(store.HOOKS_GROUP) == 2

        dispatch.send_signals()

        assert receivers.types() == ["user.online", "user.offline"]
        assert log.pending(store.HOOKS_GROUP) == 0

    def test_malformed_entry_is_skipped_and_acknowledged(
        self, log: Log, receivers: Receivers
    ) -> None:
        log.add("join", r="", u="not-a-number", n="x", s="online")
        log.join(2)

        report = dispatch.send_signals()

        assert report.malformed == 1 and receivers.types() == ["user.online"]
        assert log.pending(store.HOOKS_GROUP) == 0


class TestFailingReceiver:
    def test_holds_only_its_user_and_records_the_failure(
        self, r: redis.Redis, log: Log, receivers: Receivers, settings: Settings
    ) -> None:
        settings.PRESENCE_HOOKS_BACKOFF_BASE = 60.0
        receivers.failing = {1}
        first = log.join(1)
        log.join(2)
        log.leave(1)
        log.leave(2)

        report = dispatch.send_signals()

        # User 2 goes on; user 1's first event was tried once, the second waits behind it.
        assert receivers.types(2) == ["user.online", "user.offline"]
        assert receivers.types(1) == ["user.online"]
        assert report.failed == 1 and report.held == 1
        assert log.pending(store.HOOKS_GROUP) == 2
        failure = HookFailure.objects.get()
        assert failure.event_id == f"{first}:user.online" and failure.attempts == 1
        assert failure.receiver.endswith("Receivers.on_any") and "receiver down" in failure.error
        assert not failure.gave_up
        hold = store.read_hook_holds(r)["1"]
        assert hold.attempts == 1 and hold.due_ms >= store.now_ms() + 29_000  # half jitter

        # Not due yet: a second run leaves user 1 alone.
        receivers.failing = set()
        dispatch.send_signals()
        assert receivers.types(1) == ["user.online"]

    def test_retried_after_back_off_in_order(
        self, r: redis.Redis, log: Log, receivers: Receivers, settings: Settings
    ) -> None:
        settings.PRESENCE_HOOKS_BACKOFF_BASE = 0.05
        receivers.failing = {1}
        log.join(1)
        log.join(1, "lobby", occupied=True)
        log.leave(1)
        dispatch.send_signals()
        dispatch.send_signals()  # due within 50 ms: may retry once more, still failing
        attempts = store.read_hook_holds(r)["1"].attempts

        receivers.failing = set()
        time.sleep(0.2)
        dispatch.send_signals()

        # Every attempt of the failing entry, then the rest in order; nothing after it early.
        assert receivers.types(1) == ["user.online"] * (attempts + 1) + [
            "room.occupied",
            "room.join",
            "user.offline",
        ]
        assert log.pending(store.HOOKS_GROUP) == 0
        assert store.read_hook_holds(r) == {}
        assert HookFailure.objects.get().recovered

    def test_given_up_after_the_retry_time(
        self, r: redis.Redis, log: Log, receivers: Receivers, settings: Settings
    ) -> None:
        settings.PRESENCE_HOOKS_RETRY_FOR = 0.0
        receivers.failing = {1}
        log.join(1)
        log.leave(1)

        report = dispatch.send_signals()

        assert report.given_up == 2 and receivers.types(1) == ["user.online", "user.offline"]
        assert log.pending(store.HOOKS_GROUP) == 0
        assert store.read_hook_holds(r) == {}
        assert HookFailure.objects.filter(gave_up=True).count() == 2


class TestWithTheScripts:
    """The log written by the real Lua scripts, through the store."""

    async def test_reconnect_before_the_sweep_is_not_a_second_online(
        self, receivers: Receivers
    ) -> None:
        now = store.now_ms()
        ttl = int(app_settings.TTL * 1000)
        await store.connect(cid="c1", uid=7, username="u", channel="ch", now=now - ttl - 1)
        await store.room_join(store.ConnRef("c1", 7), "lobby", now=now - ttl - 1)
        # c1 lapsed (a crashed process); the user reconnects before any sweep.
        await store.connect(cid="c2", uid=7, username="u", channel="ch", now=now)
        await store.room_join(store.ConnRef("c2", 7), "lobby", now=now)
        # The sweep's end of c1 now finds c2: no leave. Then c2 closes: the user is offline.
        await store.end_connections([store.ConnRef("c1", 7, ("lobby",))], now=now + 1)
        await store.end_connections([store.ConnRef("c2", 7, ("lobby",))], now=now + 2)

        await sync_to_async(dispatch.send_signals)()

        # One online and one offline. Each shard's stream keeps its order: the user's events
        # on the user's shard, the lobby's on the lobby's; the two streams are not ordered
        # against each other (docs/hooks.md, "Ordering").
        types = receivers.types()
        assert [t for t in types if t.startswith("user.")] == ["user.online", "user.offline"]
        assert [t for t in types if t.startswith("room.")] == [
            "room.occupied",
            "room.join",
            "room.leave",
            "room.vacated",
        ]
        assert len(types) == 6
