"""Root of the test suite: registers the shared fixtures and runs the private redis-server.

The Redis server is started once per test run on a free port (never the shared 6379) and
emptied before each test; fault tests may kill and restart it through ``redis_server``.
Fixtures live in ``tests/support/`` (see its ``__init__``), registered here: pytest accepts
``pytest_plugins`` only in the root conftest.
"""

from __future__ import annotations

import os

import pytest

pytest_plugins = [
    "tests.support.redis",  # redis_server, r, _clean_redis (autouse)
    "tests.support.db",  # the sync thread's DB connection (autouse)
    "tests.support.users",  # user_factory, auser_factory
    "tests.support.ws",  # ws_client
    "tests.support.celery",  # celery_worker_process
    "tests.support.consume",  # consume_process
    "tests.support.seed",  # seed_connections
    "tests.support.sentinel",  # sentinel_topology (primary + replica + three sentinels)
    "tests.support.cluster",  # redis_cluster, fresh_cluster, redis_shards, sentinel_shards
]


def pytest_addoption(parser: pytest.Parser) -> None:
    """``--presence-store``: the presence store the tests run on (tests/support/cluster.py)."""
    parser.addoption(
        "--presence-store",
        choices=("single", "cluster", "shards"),
        default="single",
        help="one Redis (default), a 3-primary Redis Cluster (PRESENCE_REDIS_CLUSTER_URL) or "
        "3 independent primaries (PRESENCE_REDIS_SHARD_URLS)",
    )


def pytest_configure(config: pytest.Config) -> None:
    """Start the private Redis before any test touches settings that point at it."""
    # Leaves are immediate unless a test turns the grace window on (tests/presence/grace/):
    # the suite's other tests describe what a close does, not when a held leave expires.
    # Set in the environment so that the servers and workers tests start inherit it.
    from django.conf import settings

    from tests.support import db, redis

    os.environ.setdefault("PRESENCE_LEAVE_GRACE", "0")
    settings.PRESENCE_LEAVE_GRACE = float(os.environ["PRESENCE_LEAVE_GRACE"])
    redis.start()
    db.no_persistent_connections()
    from tests.support.cluster import start_store_shape

    start_store_shape(config.getoption("--presence-store"))


def pytest_unconfigure(config: pytest.Config) -> None:
    from tests.support import redis
    from tests.support.cluster import stop_store_shape

    stop_store_shape()
    redis.stop()
