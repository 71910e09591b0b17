"""/healthz and /readyz against the real database, Redis and channel layer."""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.test import Client

from presence import store
from presence.jobs import periodic

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "ops-token"


@pytest.fixture(autouse=True)
def metrics_token(settings: Any) -> None:
    settings.DEBUG = False
    settings.METRICS_TOKEN = TOKEN


def operator() -> Client:
    """A client that may see the details (the metrics token)."""
    return Client(HTTP_AUTHORIZATION=f"Bearer {TOKEN}")


def sweep_ran() -> None:
    """Record a successful sweep run now (what presence.sweep_expired does)."""
    periodic.run_locked("sweep", 1000, periodic.RunReport(), lambda report: None)


class TestLiveness:
    def test_healthz_answers_without_any_dependency(self, redis_server: Any) -> None:
        redis_server.kill()
        try:
            response = operator().get("/healthz")
        finally:
            redis_server.start()
        assert response.status_code == 200
        body = response.json()
        assert body["status"] == "ok"
        assert body["uptime_seconds"] >= 0


class TestAnonymousSeeStatusOnly:
    def test_healthz(self) -> None:
        assert Client().get("/healthz").json() == {"status": "ok"}

    def test_readyz_ready(self) -> None:
        sweep_ran()

        response = Client().get("/readyz")

        assert (response.status_code, response.json()) == (200, {"ready": True})

    def test_readyz_not_ready_hides_the_error_text(self, redis_server: Any) -> None:
        redis_server.kill()
        try:
            response = Client().get("/readyz")
        finally:
            redis_server.start()

        assert (response.status_code, response.json()) == (503, {"ready": False})

    def test_a_wrong_token_is_anonymous(self) -> None:
        body = Client(HTTP_AUTHORIZATION="Bearer nope").get("/healthz").json()

        assert body == {"status": "ok"}

    def test_staff_see_the_details(self, django_user_model: Any) -> None:
        client = Client()
        client.force_login(django_user_model.objects.create_user("op", is_staff=True))

        body = client.get("/healthz").json()
        ready = client.get("/readyz").json()

        assert {"status", "process", "uptime_seconds"} <= set(body)
        assert "checks" in ready and "tasks" in ready

    def test_a_user_not_staff_sees_status_only(self, django_user_model: Any) -> None:
        client = Client()
        client.force_login(django_user_model.objects.create_user("someone"))

        assert client.get("/healthz").json() == {"status": "ok"}

    def test_development_shows_everything(self, settings: Any) -> None:
        settings.DEBUG = True

        assert "process" in Client().get("/healthz").json()


class TestReadiness:
    def test_ready_when_everything_answers(self) -> None:
        sweep_ran()
        response = operator().get("/readyz")
        body = response.json()
        assert response.status_code == 200, body
        assert body["ready"] is True
        for name in ("database", "redis", "channel_layer"):
            check = body["checks"][name]
            assert check["ok"] is True and check["error"] == "", (name, check)
            assert 0 <= check["latency_ms"] < 2000
        sweep = body["tasks"]["sweep"]
        assert sweep["stale"] is False and 0 <= sweep["last_success_age_seconds"] < 5
        assert body["tasks"]["flush"]["last_success_age_seconds"] is None  # never ran: reported
        assert body["tasks"]["flush"]["stale"] is False  # ... but not fatal

    def test_consumers_are_reported_and_a_stalled_one_is_stale_but_not_fatal(self, r: Any) -> None:
        sweep_ran()
        now = store.now_ms()
        store.record_task_run(r, "hooks", {"last_success_at_ms": now}, {})
        store.record_task_run(r, "webhooks", {"last_success_at_ms": now - 120_000}, {})
        response = operator().get("/readyz")
        body = response.json()
        assert response.status_code == 200, body  # web processes serve without consumers
        assert body["tasks"]["hooks"]["stale"] is False
        assert body["tasks"]["webhooks"]["stale"] is True
        assert body["tasks"]["webhooks"]["last_success_age_seconds"] >= 120
        assert body["tasks"]["sessionlog"]["stale"] is True  # never ran

    def test_503_with_redis_stopped(self, redis_server: Any) -> None:
        sweep_ran()
        redis_server.kill()
        try:
            started = time.monotonic()
            response = operator().get("/readyz")
            elapsed = time.monotonic() - started
        finally:
            redis_server.start()
        body = response.json()
        assert response.status_code == 503
        assert body["ready"] is False
        assert body["checks"]["redis"]["ok"] is False
        assert body["checks"]["redis"]["error"]
        assert body["checks"]["channel_layer"]["ok"] is False
        assert body["checks"]["database"]["ok"] is True
        assert elapsed < 5  # each check is bounded

    def test_503_when_the_sweep_is_stale(self, settings: Any) -> None:
        # The age limit is lowered after the fresh check, not slept past: under load the
        # first request alone may take longer than any short limit.
        settings.PRESENCE_READY_SWEEP_MAX_AGE = 60
        sweep_ran()
        assert operator().get("/readyz").status_code == 200
        time.sleep(0.05)
        settings.PRESENCE_READY_SWEEP_MAX_AGE = 0.01
        response = operator().get("/readyz")
        assert response.status_code == 503
        body = response.json()
        assert body["tasks"]["sweep"]["stale"] is True
        assert all(c["ok"] for c in body["checks"].values())  # only the sweep is wrong

    def test_a_sweep_that_never_ran_is_stale_unless_the_check_is_off(self, settings: Any) -> None:
        assert operator().get("/readyz").status_code == 503
        settings.PRESENCE_READY_SWEEP_MAX_AGE = 0
        response = operator().get("/readyz")
        assert response.status_code == 200
        assert response.json()["tasks"]["sweep"]["max_age_seconds"] is None

    def test_a_failed_sweep_is_no_success(self) -> None:
        def boom(report: Any) -> None:
            raise RuntimeError("database down")

        with pytest.raises(RuntimeError):
            periodic.run_locked("sweep", 1000, periodic.RunReport(), boom)
        assert operator().get("/readyz").status_code == 503

    def test_responses_carry_a_request_id(self) -> None:
        response = operator().get("/healthz", HTTP_X_REQUEST_ID="probe-1")
        assert response["X-Request-ID"] == "probe-1"
