"""Presence metrics at /metrics: every name, values that follow real traffic, access control.

The exposition is parsed with prometheus_client's own text parser. Counters are
process-wide and the suite shares one process, so tests compare before/after values.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
import uuid
from typing import Any

import pytest
from asgiref.sync import sync_to_async
from django.test import Client
from prometheus_client.parser import text_string_to_metric_families

from presence import store
from presence.jobs import reconcile, sweep
from presence.live import processes

pytestmark = pytest.mark.django_db(transaction=True)

# Every name issue 9 lists: operators' dashboards and alerts depend on them.
REQUIRED = [
    "presence_users_online",
    "presence_connections_online",
    "presence_connections_open",
    "presence_connects_total",
    "presence_disconnects_total",
    "presence_closes_total",
    "presence_heartbeats_total",
    "presence_frames_total",
    "presence_errors_total",
    "presence_handler_duration_seconds",
    "presence_handler_errors_total",
    "presence_sweep_duration_seconds",
    "presence_sweep_expired_total",
    "presence_sweep_last_success_timestamp_seconds",
    "presence_flush_duration_seconds",
    "presence_flush_claims_total",
    "presence_flush_last_success_timestamp_seconds",
    "presence_reap_duration_seconds",
    "presence_reap_reaped_total",
    "presence_reap_last_success_timestamp_seconds",
    "presence_redis_roundtrip_seconds",
    "presence_event_loop_lag_seconds",
    "presence_asyncio_tasks",
    "presence_ghost_connections",
]


class Scrape:
    """One parsed exposition: families by name, and sample lookup."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.families = {f.name: f for f in text_string_to_metric_families(text)}
        self.samples = [s for f in self.families.values() for s in f.samples]

    def names(self) -> set[str]:
        """Family names plus every sample name (``_total``, ``_bucket``, ``_count``...)."""
        counters = {f"{f.name}_total" for f in self.families.values() if f.type == "counter"}
        return set(self.families) | counters | {s.name for s in self.samples}

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; 0 when the series does not exist (yet)."""
        for s in self.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return float(s.value)
        return 0.0

    def series(self, name: str) -> list[Any]:
        return [s for s in self.samples if s.name == name]


def scrape(client: Client | None = None, **headers: str) -> Scrape:
    response = (client or Client()).get("/metrics", **headers)
    assert response.status_code == 200, response.content
    assert response["Content-Type"].startswith("text/plain")
    return Scrape(response.content.decode())


@pytest.fixture
def dev(settings: Any) -> None:
    """Development settings: /metrics open."""
    settings.DEBUG = True


class TestExposition:
    def test_every_required_name_is_present_and_parses(self, dev: None) -> None:
        s = scrape()
        missing = [name for name in REQUIRED if name not in s.names()]
        assert not missing, missing
        # Series exist at 0 before any event (alerts on rate() need them from the start).
        assert s.series("presence_disconnects_total")
        assert s.series("presence_closes_total")
        assert s.series("presence_errors_total")
        assert s.series("presence_handler_duration_seconds_count")

    def test_django_metrics_are_still_exported(self, dev: None) -> None:
        names = scrape().names()
        assert "django_http_requests_total_by_method_total" in names

    def test_online_gauges_come_from_redis(self, dev: None, r: Any) -> None:
        k, now = store.keys(), store.now_ms()
        r.zadd(k.users, {"1": now + 60_000, "2": now + 60_000, "3": now - 1})  # 3 lapsed
        r.zadd(k.conns, {"a": now + 60_000, "b": now + 60_000, "c": now + 60_000})
        s = scrape()
        assert s.value("presence_users_online") == 2
        assert s.value("presence_connections_online") == 3
        assert s.value("presence_redis_up") == 1

    def test_scrape_without_redis_still_answers(
        self, dev: None, redis_server: Any, caplog: Any
    ) -> None:
        redis_server.kill()
        try:
            s = scrape()
        finally:
            redis_server.start()
        assert s.value("presence_redis_up") == 0
        assert "presence_connects_total" in s.names()  # in-process counters still there
        assert "presence_users_online" not in s.names()


class TestTraffic:
    async def test_a_connection_is_counted_from_open_to_close(
        self, dev: None, auser_factory: Any, ws_client: Any
    ) -> None:
        before = await sync_to_async(scrape)()
        user = await auser_factory()
        client = await ws_client(user)
        await client.request("heartbeat", id_=1)
        await client.request("no.such.type", id_=2)
        await client.send_raw(text="{not json")
        assert (await client.recv())["code"] == "bad_json"
        await client.request("room.join", {"room": "lobby"}, id_=3)
        during = await sync_to_async(scrape)()
        await client.close()
        await asyncio.sleep(0.1)
        after = await sync_to_async(scrape)()

        def delta(name: str, s: Scrape = after, **labels: str) -> float:
            return s.value(name, **labels) - before.value(name, **labels)

        assert delta("presence_connects_total") == 1
        assert delta("presence_frames_total", type="heartbeat", outcome="ok") == 1
        assert delta("presence_frames_total", type="room.join", outcome="ok") == 1
        assert delta("presence_frames_total", type="other", outcome="error") == 2
        assert delta("presence_errors_total", code="unknown_type") == 1
        assert delta("presence_errors_total", code="bad_json") == 1
        assert delta("presence_heartbeats_total") >= 1
        assert delta("presence_handler_duration_seconds_count", handler="heartbeat") == 1
        assert delta("presence_handler_duration_seconds_count", handler="room.join") == 1
        assert delta("presence_redis_roundtrip_seconds_count") >= 1
        assert delta("presence_disconnects_total", reason="closed") == 1
        assert delta("presence_closes_total", code="1000") == 1
        # While connected: in Redis and held by this process.
        assert during.value("presence_connections_online") == 1
        assert during.value("presence_users_online") == 1
        mine = processes.local().id
        assert during.value("presence_connections_open", process=mine) == 1
        assert after.value("presence_connections_open", process=mine) == 0
        assert during.value("presence_asyncio_tasks", process=mine) >= 1
        assert during.value("presence_process_info", process=mine) == 1

    async def test_refused_and_kicked_sockets_are_counted_by_code(
        self, dev: None, auser_factory: Any, ws_client: Any
    ) -> None:
        before = await sync_to_async(scrape)()
        client = await ws_client(None, token="bad", expect_hello=False)
        code, _ = await client.recv_close()
        assert code == 4401
        user = await auser_factory()
        client = await ws_client(user)
        await client.comm.send_input({"type": "session.kick"})
        code, _ = await client.recv_close()
        assert code == 4410
        after = await sync_to_async(scrape)()
        assert (
            after.value("presence_closes_total", code="4401")
            - before.value("presence_closes_total", code="4401")
            == 1
        )
        assert (
            after.value("presence_disconnects_total", reason="kicked")
            - before.value("presence_disconnects_total", reason="kicked")
            == 1
        )

    async def test_connects_the_gate_refused_are_counted_by_reason(
        self, dev: None, auser_factory: Any, ws_client: Any, settings: Any
    ) -> None:
        settings.PRESENCE_MAX_CONNECTIONS_PER_USER = 1
        user = await auser_factory()
        before = await sync_to_async(scrape)()
        await ws_client(user)
        refused = await ws_client(user, expect_hello=False)
        code, _ = await refused.recv_close()
        assert code == 4429
        after = await sync_to_async(scrape)()
        name = "presence_connects_refused_total"
        assert (
            after.value(name, reason="too_many_connections")
            - before.value(name, reason="too_many_connections")
            == 1
        )
        assert {s.labels["reason"] for s in after.series(name)} >= {"blocked", "token_used"}

    async def test_rate_limited_frames_are_dropped_and_counted(
        self, dev: None, settings: Any, auser_factory: Any, ws_client: Any
    ) -> None:
        settings.PRESENCE_RATE_LIMIT = 0.001
        settings.PRESENCE_RATE_BURST = 1
        before = await sync_to_async(scrape)()
        client = await ws_client(await auser_factory())
        for i in range(3):
            await client.send({"type": "heartbeat", "id": i})
        await asyncio.sleep(0.2)
        after = await sync_to_async(scrape)()
        assert (
            after.value("presence_frames_total", type="other", outcome="dropped")
            - (before.value("presence_frames_total", type="other", outcome="dropped"))
            == 2
        )
        assert (
            after.value("presence_errors_total", code="rate_limited")
            - before.value("presence_errors_total", code="rate_limited")
            == 2
        )

    async def test_handler_errors_by_handler_and_kind(
        self, dev: None, auser_factory: Any, ws_client: Any, monkeypatch: Any
    ) -> None:
        from presence.handlers import registry

        spec = registry.get("status.set")
        assert spec is not None

        async def broken(ctx: Any, data: Any) -> Any:
            raise RuntimeError("boom")

        # HandlerSpec is frozen: swap the registry's entry for a copy with a failing function.
        failing = dataclasses.replace(spec, func=broken)
        monkeypatch.setitem(registry._handlers, "status.set", failing)
        before = await sync_to_async(scrape)()
        client = await ws_client(await auser_factory())
        reply = await client.request("status.set", {"status": "away"})
        assert reply["code"] == "handler_error"
        after = await sync_to_async(scrape)()
        assert (
            after.value("presence_handler_errors_total", handler="status.set", kind="error")
            - before.value("presence_handler_errors_total", handler="status.set", kind="error")
            == 1
        )


class TestTasksAndGhosts:
    async def test_sweep_metrics_follow_its_runs(
        self, dev: None, auser_factory: Any, seed_connections: Any
    ) -> None:
        users = [await auser_factory() for _ in range(2)]
        await seed_connections(users, age=70)  # lapsed (TTL 60 s), keys still there
        report = await sync_to_async(sweep.sweep_expired)()
        assert report.ended == 2
        s = await sync_to_async(scrape)()
        assert s.value("presence_sweep_expired_total") == 2
        assert s.value("presence_sweep_duration_seconds_count") == 1
        assert s.value("presence_sweep_duration_seconds_bucket", le="+Inf") == 1
        assert abs(s.value("presence_sweep_last_success_timestamp_seconds") - time.time()) < 10
        assert s.value("presence_task_runs_total", task="sweep", outcome="ok") == 1
        # Never ran: no timestamp at all (an alert on its age must not see "1970").
        assert s.series("presence_flush_last_success_timestamp_seconds") == []

    async def test_ghosts_gauge_shows_the_last_reconciliation(self, dev: None) -> None:
        for _ in range(2):
            await store.connect(
                cid=str(uuid.uuid4()),
                uid=1,
                username="u",
                channel="specific.x!y",
                now=store.now_ms() - 5000,
            )
        assert (await sync_to_async(scrape)()).value("presence_ghost_connections") == 0
        await sync_to_async(reconcile.reconcile_connections)()
        s = await sync_to_async(scrape)()
        assert s.value("presence_ghost_connections") == 2
        assert s.value("presence_reconcile_last_success_timestamp_seconds") > 0


class TestAccess:
    def test_open_in_development(self, settings: Any) -> None:
        settings.DEBUG = True
        assert Client().get("/metrics").status_code == 200

    def test_production_without_configuration_refuses_and_says_so_once(
        self, settings: Any, caplog: Any, monkeypatch: Any
    ) -> None:
        from presence.ops import views as opsviews

        monkeypatch.setattr(opsviews, "_warned_unconfigured", False)
        settings.DEBUG, settings.METRICS_TOKEN, settings.METRICS_ALLOWED_NETWORKS = False, "", []
        with caplog.at_level(logging.WARNING, logger="presence.ops.views"):
            assert Client().get("/metrics").status_code == 403
            assert Client().get("/metrics").status_code == 403
        lines = [r for r in caplog.records if r.name == "presence.ops.views"]
        assert len(lines) == 1
        assert "METRICS_TOKEN" in lines[0].getMessage()

    def test_production_token(self, settings: Any) -> None:
        settings.DEBUG, settings.METRICS_TOKEN, settings.METRICS_ALLOWED_NETWORKS = False, "s3", []
        client = Client()
        assert client.get("/metrics").status_code == 403
        assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer wrong").status_code == 403
        assert client.get("/metrics", HTTP_AUTHORIZATION="Basic s3").status_code == 403
        assert client.get("/metrics", HTTP_AUTHORIZATION="Bearer s3").status_code == 200

    def test_production_networks(self, settings: Any) -> None:
        settings.DEBUG, settings.METRICS_TOKEN = False, ""
        settings.METRICS_ALLOWED_NETWORKS = ["10.0.0.0/8", "not-a-network"]
        assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 403
        assert Client(REMOTE_ADDR="10.1.2.3").get("/metrics").status_code == 200
        settings.METRICS_ALLOWED_NETWORKS = ["127.0.0.1/32"]
        assert Client(REMOTE_ADDR="127.0.0.1").get("/metrics").status_code == 200


class TestProcessesEndpoint:
    async def test_staff_only(self, auser_factory: Any) -> None:
        proc = processes.LocalProcess()
        proc.track_open("a")
        await proc.publish()
        staff = await auser_factory(is_staff=True)
        plain = await auser_factory()

        def get(user: Any) -> Any:
            client = Client()
            if user is not None:
                client.force_login(user)
            return client.get("/api/presence/processes/")

        assert (await sync_to_async(get)(None)).status_code == 401
        assert (await sync_to_async(get)(plain)).status_code == 403
        response = await sync_to_async(get)(staff)
        assert response.status_code == 200
        body = response.json()
        assert [p["id"] for p in body["processes"]] == [proc.id]
        assert body["processes"][0]["sockets"] == 1
        assert set(body["tasks"]) >= {"sweep", "flush", "reap"}
