"""/readyz pings every node of the presence store, not only REDIS_URL: with 3 independent
primaries (PRESENCE_REDIS_SHARD_URLS) one check per node; one stopped redis-server makes it
503 naming that node (and no other), within the probe's bound; and on a Cluster, one check
per primary."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.test import Client

from presence import store
from presence.jobs import periodic
from presence.redis_url import redacted
from tests.support.cluster import ClusterTopology, ShardsTopology

pytestmark = pytest.mark.django_db(transaction=True)

TOKEN = "ops-token"


@pytest.fixture(autouse=True)
def metrics_token(settings: Any) -> None:
    settings.DEBUG = False
    settings.METRICS_TOKEN = TOKEN
    settings.PRESENCE_READY_SWEEP_MAX_AGE = 0  # the sweep's age is not what is tested here


def readyz() -> tuple[int, dict[str, Any], float]:
    started = time.monotonic()
    response = Client(HTTP_AUTHORIZATION=f"Bearer {TOKEN}").get("/readyz")
    return response.status_code, response.json(), time.monotonic() - started


@pytest.fixture
def own_shards(tmp_path: Path, settings: Any) -> Iterator[ShardsTopology]:
    """3 redis-servers of this test's own (one is stopped), as the store's shard URLs."""
    topology = ShardsTopology(tmp_path / "shards").start()
    settings.PRESENCE_REDIS_SHARD_URLS = topology.urls
    store.reset_clients()
    try:
        yield topology
    finally:
        store.reset_clients()
        topology.stop()


@pytest.mark.serial  # measures the probe's bound in wall time
def test_a_stopped_shard_node_is_named(own_shards: ShardsTopology) -> None:
    periodic.run_locked("sweep", 1000, periodic.RunReport(), lambda report: None)
    status, body, _ = readyz()
    nodes = [f"store {redacted(url)}" for url in own_shards.urls]
    assert status == 200, body
    for name in nodes:
        assert body["checks"][name]["ok"] is True, body["checks"]

    own_shards.servers[1].kill()
    status, body, elapsed = readyz()
    assert status == 503, body
    assert body["degraded"] == [nodes[1]]
    assert body["checks"][nodes[1]]["error"]
    assert body["checks"][nodes[0]]["ok"] and body["checks"][nodes[2]]["ok"]
    assert body["checks"]["redis"]["ok"] is True  # REDIS_URL itself answers
    assert elapsed < 5  # each ping is bounded

    own_shards.servers[1].start()
    store.reset_clients()
    status, body, _ = readyz()
    assert status == 200, body


def test_one_check_per_cluster_primary(redis_cluster: ClusterTopology, settings: Any) -> None:
    settings.PRESENCE_REDIS_CLUSTER_URL = redis_cluster.url
    store.reset_clients()
    try:
        status, body, _ = readyz()
    finally:
        store.reset_clients()
    assert status == 200, body
    names = [name for name in body["checks"] if name.startswith("store ")]
    assert len(names) == 3, body["checks"]
    assert all(body["checks"][name]["ok"] for name in names)


def test_one_redis_has_no_extra_check() -> None:
    status, body, _ = readyz()
    assert status == 200, body
    assert not [name for name in body["checks"] if name.startswith("store ")]
