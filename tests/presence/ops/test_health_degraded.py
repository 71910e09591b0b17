"""/readyz while a dependency is away: 503 naming it (``degraded``), within the probe bound,
and ready again once it is back: the Celery broker, and the presence store and channel layer
on a Sentinel topology whose primary is killed (degraded until the replica is promoted)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import current_app
from channels.layers import channel_layers
from django.test import Client

from config.embedded_redis import RedisServer
from presence import store
from presence.jobs import periodic
from presence.ops.health import CHECK_TIMEOUT
from presence.redis_url import channel_layer_host
from tests.support.sentinel import SentinelTopology

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "ops-token"


@pytest.fixture(autouse=True)
def metrics_token(settings: Any) -> None:
    """The probes read the details (``degraded``, ``checks``), which anonymous callers in
    production do not get: they ask with the metrics token, as an operator's probe would."""
    settings.DEBUG = False
    settings.METRICS_TOKEN = TOKEN


def sweep_ran() -> None:
    periodic.run_locked("sweep", 1000, periodic.RunReport(), lambda report: None)


def readyz() -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    response = Client(HTTP_AUTHORIZATION=f"Bearer {TOKEN}").get("/readyz")
    return response.status_code, response.json(), time.monotonic() - started


@pytest.fixture
def own_broker(tmp_path: Path) -> Iterator[RedisServer]:
    """A Redis of its own as the Celery broker of this process (to stop it alone)."""
    server = RedisServer(tmp_path / "broker").start()
    before = current_app.conf.broker_url
    current_app.conf.broker_url = server.url
    try:
        yield server
    finally:
        current_app.conf.broker_url = before
        server.stop()


@pytest.mark.serial  # measures the probe's bound in wall time: other processes would distort it
def test_broker_away_is_degraded_then_ready_again(own_broker: RedisServer) -> None:
    sweep_ran()
    status, body, _ = readyz()
    assert status == 200 and body["degraded"] == [], body
    assert body["checks"]["broker"]["ok"] is True

    own_broker.kill()
    status, body, elapsed = readyz()

    assert status == 503
    assert body["ready"] is False
    assert body["degraded"] == ["broker"]
    assert body["checks"]["broker"]["error"]
    assert all(body["checks"][name]["ok"] for name in ("database", "redis", "channel_layer"))
    assert elapsed < CHECK_TIMEOUT + 1.5  # bounded: the probe does not wait for the broker

    own_broker.start()
    status, body, _ = readyz()
    assert status == 200 and body["degraded"] == [], body


@pytest.mark.slow
@pytest.mark.serial  # measures the probe's bound in wall time, as above
def test_store_and_layer_degraded_during_a_failover_then_ready(
    sentinel_topology: SentinelTopology, settings: Any
) -> None:
    url = sentinel_topology.url
    settings.REDIS_URL = url
    layers = {**settings.CHANNEL_LAYERS}
    layers["default"] = {
        **layers["default"],
        "CONFIG": {
            **layers["default"]["CONFIG"],
            "hosts": [channel_layer_host(url, socket_connect_timeout=2)],
        },
    }
    settings.CHANNEL_LAYERS = layers
    store.reset_clients()
    channel_layers.backends.clear()
    sweep_ran()
    status, body, _ = readyz()
    assert status == 200, body

    killed = sentinel_topology.kill_primary(wait=False)  # the sentinels still name it
    status, body, elapsed = readyz()

    assert status == 503
    assert "redis" in body["degraded"] and "channel_layer" in body["degraded"], body
    assert body["checks"]["database"]["ok"] and body["checks"]["broker"]["ok"]
    assert elapsed < CHECK_TIMEOUT + 1.5

    sentinel_topology.wait_primary_changed(killed.address)
    deadline = time.monotonic() + 10
    while (status := readyz()[0]) != 200 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert status == 200, readyz()[1]
