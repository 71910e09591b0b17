"""Webhooks (presence/hooks/webhooks.py): routing from the event log into the outbox and
signed, batched delivery to a real HTTP receiver (tests/support/webhook_receiver.py). Real Redis,
real database; the Celery tasks' bodies are called in this process (the delivery runs the
router starts are queued on the test Redis and never run here)."""

from __future__ import annotations

import datetime as dt
import re
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.utils import timezone
from pytest_django.fixtures import Settings

from presence import store
from presence.hooks import webhooks
from presence.jobs import groups as reader
from presence.models import DeliveryState, WebhookDelivery, WebhookEndpoint, WebhookEvent
from presence.ops import collector as metrics
from tests.support.hook_log import Log
from tests.support.webhook_receiver import Receiver

pytestmark = pytest.mark.django_db(transaction=True)

SECRET = "s3cret"


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    rec = Receiver()
    yield rec
    rec.stop()


@pytest.fixture
def endpoint(receiver: Receiver, settings: Settings) -> WebhookEndpoint:
    settings.PRESENCE_WEBHOOK_BATCH_WINDOW = 0.0
    # The receiver is on loopback: a deliberate internal receiver (docs/hooks.md).
    settings.PRESENCE_WEBHOOK_ALLOWED_HOSTS = ["127.0.0.1"]
    return WebhookEndpoint.objects.create(name="ep", url=receiver.url, secret=SECRET)


@pytest.fixture
def log(r: redis.Redis) -> Log:
    return Log(r)


def pending(ep: WebhookEndpoint) -> list[WebhookEvent]:
    return list(WebhookEvent.objects.filter(endpoint=ep, state=DeliveryState.PENDING))


def make_due(ep: WebhookEndpoint) -> None:
    """Skip the back-off (the test does not wait for it)."""
    WebhookEvent.objects.filter(endpoint=ep).update(next_attempt_at=timezone.now())


class TestSigning:
    def test_signature_is_hmac_of_timestamp_dot_body(self) -> None:
        import hashlib
        import hmac

        header = webhooks.sign("k", b'{"a":1}', 1_700_000_000)
        expected = hmac.new(b"k", b'1700000000.{"a":1}', hashlib.sha256).hexdigest()
        assert header == f"t=1700000000,v1={expected}"

    def test_verify(self) -> None:
        now = int(time.time())
        header = webhooks.sign("k", b"body", now)
        assert webhooks.verify("k", b"body", header)
        assert not webhooks.verify("other", b"body", header)
        assert not webhooks.verify("k", b"body!", header)
        assert not webhooks.verify("k", b"body", webhooks.sign("k", b"body", now - 3600))
        assert not webhooks.verify("k", b"body", "garbage")


class TestRouteAndDeliver:
    def test_one_signed_batch_in_log_order(
        self, log: Log, endpoint: WebhookEndpoint, receiver: Receiver
    ) -> None:
        log.join(1)
        log.join(1, "lobby", occupied=True)
        log.leave(1, "lobby", vacated=True)
        last = log.leave(1, why="kicked")

        routed = webhooks.route_webhooks()
        report = webhooks.deliver(endpoint.pk)

        assert routed.queued == 6 and routed.started == 1 and report.delivered == 6
        assert log.pending(store.WEBHOOKS_GROUP) == 0
        [request] = receiver.delivered()
        assert request.signed_with(SECRET) and not request.signed_with("wrong")
        assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", request.headers["X-Presence-Signature"])
        assert request.headers["Content-Type"] == "application/json"
        body = request.json
        assert body["endpoint"] == "ep"
        assert [e["type"] for e in body["events"]] == [
            "user.online",
            "room.occupied",
            "room.join",
            "room.leave",
            "room.vacated",
            "user.offline",
        ]
        offline = body["events"][-1]
        assert offline == {
            "id": f"{last}:user.offline",
            "type": "user.offline",
            "at": offline["at"],
            "at_ms": offline["at_ms"],
            "user": {"id": 1, "username": "user1"},
            "room": None,
            "status": "offline",
            "reason": "kicked",
            "position": last,
        }
        assert offline["at"].endswith("Z")
        assert not pending(endpoint)
        delivery = WebhookDelivery.objects.get()
        assert (delivery.outcome, delivery.status_code, delivery.attempt, delivery.events) == (
            "delivered",
            200,
            1,
            6,
        )

    def test_endpoint_gets_only_its_types(
        self, log: Log, endpoint: WebhookEndpoint, receiver: Receiver
    ) -> None:
        endpoint.event_types = ["user.offline"]
        endpoint.save()
        log.join(1)
        log.leave(1)

        webhooks.route_webhooks()
        webhooks.deliver(endpoint.pk)

        assert [e["type"] for e in receiver.events()] == ["user.offline"]

    def test_routing_twice_queues_once(
        self, r: redis.Redis, log: Log, endpoint: WebhookEndpoint
    ) -> None:
        log.join(1)
        webhooks.route_webhooks()
        # The same entry read again (as after a router killed between commit and XACK).
        log.r.xgroup_setid(log.key, store.WEBHOOKS_GROUP, "0")  # shard 0's stream, on its node
        webhooks.route_webhooks()

        assert WebhookEvent.objects.count() == 1

    def test_batches_of_batch_size(
        self, log: Log, endpoint: WebhookEndpoint, receiver: Receiver, settings: Settings
    ) -> None:
        settings.PRESENCE_WEBHOOK_BATCH_SIZE = 2
        for uid in range(1, 6):
            log.join(uid)

        webhooks.route_webhooks()
        report = webhooks.deliver(endpoint.pk)

        assert report.posts == 3
        assert [len(req.events) for req in receiver.delivered()] == [2, 2, 1]
        assert [e["user"]["id"] for e in receiver.events()] == [1, 2, 3, 4, 5]

    def test_not_due_before_the_window_unless_the_batch_is_full(
        self, r: redis.Redis, log: Log, endpoint: WebhookEndpoint, settings: Settings
    ) -> None:
        settings.PRESENCE_WEBHOOK_BATCH_WINDOW = 60.0
        settings.PRESENCE_WEBHOOK_BATCH_SIZE = 3
        log.join(1)
        assert webhooks.route_webhooks().started == 0
        assert store.read_webhook_backlog(r) == {"ep": 1}
        log.join(2)
        log.join(3)
        assert webhooks.route_webhooks().started == 1


class TestFailures:
    def test_failure_backs_off_and_the_head_waits(
        self, log: Log, endpoint: WebhookEndpoint, receiver: Receiver, settings: Settings
    ) -> None:
        settings.PRESENCE_HOOKS_BACKOFF_BASE = 30.0
        receiver.status = 503
        log.join(1)
        log.leave(1)
        webhooks.route_webhooks()

        report = webhooks.deliver(endpoint.pk)

        assert report.posts == 1 and report.failed == 2
        events = pending(endpoint)
        assert [e.attempts for e in events] == [1, 1]
        assert all(e.next_attempt_at >= timezone.now() + dt.timedelta(seconds=14) for e in events)
        assert events[0].last_error == "HTTP 503"
        # A newer event does not overtake the waiting head.
        log.join(2)
        webhooks.route_webhooks()
        assert webhooks.deliver(endpoint.pk).posts == 0

        receiver.status = 200
        make_due(endpoint)
        webhooks.deliver(endpoint.pk)

        assert [(e["type"], e["user"]["id"]) for e in receiver.events()] == [
            ("user.online", 1),
            ("user.offline", 1),
            ("user.online", 2),
        ]
        outcomes = list(WebhookDelivery.objects.order_by("id").values_list("outcome", "attempt"))
        assert outcomes == [("failed", 1), ("delivered", 2)]

    def test_timeout_counts_as_a_failure(
        self, log: Log, endpoint: WebhookEndpoint, receiver: Receiver, settings: Settings
    ) -> None:
        settings.PRESENCE_WEBHOOK_TIMEOUT = 0.3
        receiver.delay = 1.0
        log.join(1)
        webhooks.route_webhooks()

        webhooks.deliver(endpoint.pk)

        delivery = WebhookDelivery.objects.get()
        assert delivery.outcome == "timeout" and 250 <= delivery.latency_ms < 1000
        assert pending(endpoint)[0].attempts == 1

    def test_refused_connection_and_redirect_are_failures(
        self, log: Log, endpoint: WebhookEndpoint, receiver: Receiver
    ) -> None:
        receiver.status = 302
        log.join(1)
        webhooks.route_webhooks()
        webhooks.deliver(endpoint.pk)
        receiver.stop()
        make_due(endpoint)
        webhooks.deliver(endpoint.pk)

        rows = list(WebhookDelivery.objects.order_by("id"))
        assert [(d.outcome, d.status_code) for d in rows] == [("failed", 302), ("failed", None)]
        assert "refused" in rows[1].error.lower()

    def test_dead_letter_then_replay(
        self, log: Log, endpoint: WebhookEndpoint, receiver: Receiver, settings: Settings
    ) -> None:
        settings.PRESENCE_WEBHOOK_RETRY_FOR = 0.0
        receiver.status = 500
        log.join(1)
        log.join(2)
        webhooks.route_webhooks()

        report = webhooks.deliver(endpoint.pk)

        assert report.dead == 2
        assert WebhookEvent.objects.filter(state=DeliveryState.DEAD).count() == 2
        receiver.status = 200
        assert webhooks.do_replay_dead_letters(WebhookEvent.objects.all()) == 2
        webhooks.deliver(endpoint.pk)
        assert [e["user"]["id"] for e in receiver.events()] == [1, 2]
        assert WebhookEvent.objects.filter(state=DeliveryState.DELIVERED).count() == 2

    def test_a_delivery_run_holds_the_endpoint(
        self, r: redis.Redis, log: Log, endpoint: WebhookEndpoint, receiver: Receiver
    ) -> None:
        log.join(1)
        webhooks.route_webhooks()
        token = store.acquire_task_lock(r, webhooks.lock_name(endpoint.pk), 10_000)
        assert token

        assert webhooks.deliver(endpoint.pk).skipped
        assert not receiver.requests


class TestEnvironmentEndpoint:
    def test_follows_the_settings(self, receiver: Receiver, settings: Settings) -> None:
        settings.PRESENCE_WEBHOOK_URL = receiver.url
        settings.PRESENCE_WEBHOOK_SECRET = "env-secret"
        settings.PRESENCE_WEBHOOK_EVENTS = ["user.online", "user.offline"]

        webhooks.route_webhooks()

        ep = WebhookEndpoint.objects.get(name=WebhookEndpoint.ENVIRONMENT)
        assert (ep.url, ep.secret, ep.event_types, ep.enabled, ep.from_environment) == (
            receiver.url,
            "env-secret",
            ["user.online", "user.offline"],
            True,
            True,
        )
        settings.PRESENCE_WEBHOOK_URL = ""
        webhooks.route_webhooks()
        ep.refresh_from_db()
        assert not ep.enabled


class TestMetrics:
    def test_deliveries_latency_and_backlog(
        self, log: Log, endpoint: WebhookEndpoint, receiver: Receiver
    ) -> None:
        log.join(1)
        webhooks.route_webhooks()
        webhooks.deliver(endpoint.pk)
        log.join(2)
        webhooks.route_webhooks()

        text = metrics.exposition().decode()

        assert 'presence_webhook_deliveries_total{endpoint="ep",outcome="delivered"}' in text
        assert 'presence_webhook_delivery_seconds_count{endpoint="ep"}' in text
        assert 'presence_webhook_backlog{endpoint="ep"} 1.0' in text


def test_reader_constants_bound_a_run() -> None:
    """The lock of a run lives as long as its hard time limit, above its budget."""
    assert reader.TIME_BUDGET < reader.SOFT_TIME_LIMIT < reader.TIME_LIMIT


class TestAdmin:
    def test_pages_show_deliveries_and_dead_letters(
        self, log: Log, endpoint: WebhookEndpoint, receiver: Receiver, admin_client: Any
    ) -> None:
        receiver.status = 500
        log.join(1)
        webhooks.route_webhooks()
        webhooks.deliver(endpoint.pk)

        page = admin_client.get(f"/admin/presence/webhookendpoint/{endpoint.pk}/change/")
        assert page.status_code == 200
        assert "recent deliveries" in page.content.decode().lower()
        assert "HTTP 500" in page.content.decode()
        for model in ("webhookendpoint", "webhookevent", "webhookdelivery", "hookfailure"):
            assert admin_client.get(f"/admin/presence/{model}/").status_code == 200

    def test_replay_needs_its_permission(
        self, log: Log, endpoint: WebhookEndpoint, django_user_model: Any, client: Any
    ) -> None:
        from django.contrib.auth.models import Permission

        log.join(1)
        webhooks.route_webhooks()
        WebhookEvent.objects.update(state=DeliveryState.DEAD)
        staff = django_user_model.objects.create_user("op", password="x", is_staff=True)
        staff.user_permissions.add(Permission.objects.get(codename="view_webhookevent"))
        client.force_login(staff)
        ids = list(WebhookEvent.objects.values_list("pk", flat=True))

        page = client.get("/admin/presence/webhookevent/")
        assert page.status_code == 200 and 'value="replay"' not in page.content.decode()

        staff.user_permissions.add(Permission.objects.get(codename="replay_webhookevent"))
        staff = django_user_model.objects.get(pk=staff.pk)  # no cached permissions
        client.force_login(staff)
        client.post("/admin/presence/webhookevent/", {"action": "replay", "_selected_action": ids})
        assert WebhookEvent.objects.get().state == DeliveryState.PENDING
