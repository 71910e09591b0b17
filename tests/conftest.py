"""Root of the test suite: registers the shared fixtures and runs the private redis-server.

The Redis server is started once per test process on a free port (never the shared 6379)
and emptied before each test; fault tests may kill and restart it through ``redis_server``.
Under pytest-xdist (``make test`` runs ``-n``) every worker is such a process, with its own
Redis and its own test database; the tests marked ``serial`` run in a second pass of their own
(``--serial-pass``, see tests/README.md). Fixtures live in ``tests/support/`` (see its
``__init__``), registered here: pytest accepts ``pytest_plugins`` only in the root conftest.
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
    """``--presence-store``: the presence store the tests run on (tests/support/cluster.py);
    ``--serial-pass``: only the tests marked serial (make test's second pass)."""
    parser.addoption(
        "--presence-store",
        choices=("single", "cluster", "shards"),
        default="single",
        help="one Redis (default), a 3-primary Redis Cluster (PRESENCE_REDIS_CLUSTER_URL) or "
        "3 independent primaries (PRESENCE_REDIS_SHARD_URLS)",
    )
    parser.addoption(
        "--serial-pass",
        action="store_true",
        help="run only the tests marked serial (the second, one-process pass of make test)",
    )


def parallel(config: pytest.Config) -> bool:
    """True in a pytest-xdist run (its controller or one of its workers)."""
    return hasattr(config, "workerinput") or bool(getattr(config.option, "numprocesses", 0))


def pytest_configure(config: pytest.Config) -> None:
    """Start the private Redis before any test touches settings that point at it."""
    from tests.support.shapes import MARKERS

    for marker in MARKERS:
        config.addinivalue_line("markers", marker)
    if parallel(config) and not hasattr(config, "workerinput"):
        return  # the xdist controller runs no test; each worker starts its own Redis
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
    db.test_database_of_this_run()
    db.sqlite_test_database_in_ram()


def starts_no_process(item: pytest.Item) -> bool:
    return not any(item.iter_markers("slow")) and not any(item.iter_markers("browser"))


def expected_seconds(item: pytest.Item) -> float:
    """``slow(seconds=N)``: about how long the test takes (0 when not said)."""
    marker = item.get_closest_marker("slow")
    return float(marker.kwargs.get("seconds", 0)) if marker else 0.0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Split the run in two passes: the xdist workers leave out the tests marked ``serial``
    (they measure time or CPU, so they need the machine to themselves), ``--serial-pass`` runs
    only those. A plain ``pytest`` without either runs everything in one process. The suites
    that run on every store shape are marked ``shapes`` first (tests/support/shapes.py)."""
    from tests.support.shapes import mark

    mark(items, config.getoption("--presence-store"))
    if config.getoption("--serial-pass"):
        keep = [item for item in items if item.get_closest_marker("serial")]
    elif parallel(config):
        keep = [item for item in items if not item.get_closest_marker("serial")]
        # The tests that start processes first, the longest of them before the rest: xdist's
        # scheduler hands the first items out round-robin, so the long ones spread over the
        # workers instead of ending the run on one of them (a stable sort: the order within
        # each kind stays the collection's). Measured: the 100 s one started 221 s into a
        # pass when it came in collection order.
        keep.sort(key=lambda item: (starts_no_process(item), -expected_seconds(item)))
    else:
        return
    kept = set(keep)
    config.hook.pytest_deselected(items=[item for item in items if item not in kept])
    items[:] = keep


def pytest_sessionfinish(session: pytest.Session) -> None:
    """Stop the private Redis (and the store's shape) and remove the SQLite test database's
    RAM folder: every fixture, the test database's included, is torn down by now.

    Here, not only in ``pytest_unconfigure``: an xdist worker reports its end from the
    session's finish and the controller may stop it before its unconfigure runs, which left
    each worker's redis-server running after the run (two per ``-n 2`` run, seen with ps).
    """
    _stop_what_configure_started()


def pytest_unconfigure(config: pytest.Config) -> None:
    _stop_what_configure_started()  # idempotent: a run ended before its session finished


def _stop_what_configure_started() -> None:
    from tests.support import db, redis
    from tests.support.cluster import stop_store_shape

    stop_store_shape()
    redis.stop()
    db.remove_ram_dir()
