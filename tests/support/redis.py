"""The private redis-server of a test run, and the fixtures on it (plugin of tests/conftest.py).

``start()`` runs it once per test run on a free port (never the shared 6379) and points the
settings, the Celery app and subprocesses' ``REDIS_URL`` at it; ``_clean_redis`` empties it
before each test; fault tests may kill and restart it through ``redis_server``.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import redis
from channels.layers import channel_layers
from django.conf import settings

from config.embedded_redis import RedisServer
from presence import store

_server: RedisServer | None = None
_tmp: Path | None = None


def start() -> RedisServer:
    """Start the private Redis and point everything at it (called from ``pytest_configure``)."""
    global _server, _tmp
    _tmp = Path(tempfile.mkdtemp(prefix="presence-tests-"))
    _server = RedisServer(_tmp / "redis").start()
    url = _server.url
    os.environ["REDIS_URL"] = url  # for subprocesses (ASGI server, Celery worker)
    settings.REDIS_URL = url
    settings.CELERY_BROKER_URL = url
    settings.CHANNEL_LAYERS["default"]["CONFIG"]["hosts"][0]["address"] = url
    from config.celery import app as celery_app

    celery_app.conf.broker_url = url
    return _server


def stop() -> None:
    """Stop it and remove its files (called from ``pytest_unconfigure``)."""
    if _server is not None:
        _server.stop()
    if _tmp is not None:
        shutil.rmtree(_tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def redis_server() -> RedisServer:
    """The private redis-server of this test run (kill/restart it in fault tests)."""
    assert _server is not None
    return _server


@pytest.fixture(autouse=True)
def _clean_redis(redis_server: RedisServer) -> Iterator[None]:
    """Every test starts with an empty Redis and fresh clients."""
    if redis_server.process is None or redis_server.process.poll() is not None:
        # A fault test killed it. Not "when PING fails": on a busy machine a PING can miss
        # its 0.5 s while the server lives, and a second start on its port then returned on
        # the old server's PONG and orphaned it (it outlived the run).
        redis_server.start()
    redis.Redis.from_url(redis_server.url).flushall()
    store.reset_clients()
    channel_layers.backends.clear()
    yield
    store.reset_clients()
    channel_layers.backends.clear()


@pytest.fixture
def r(redis_server: RedisServer) -> redis.Redis:
    """A plain sync client on the test Redis (decoded strings)."""
    return redis.Redis.from_url(redis_server.url, decode_responses=True)


@contextmanager
def paused(server: RedisServer) -> Iterator[None]:
    """The redis-server process stopped (SIGSTOP): connections open, nothing answers."""
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def user_side(uid: int | str) -> tuple[store.Keys, redis.Redis]:
    """The keys and the store's client of ``uid``'s home shard (a connection's hash, its
    rooms set, the user's hash): where every store shape keeps them."""
    shard = store.user_home(uid)
    return store.keys(shard), store.client_for(shard)


def room_side(room: str) -> tuple[store.Keys, redis.Redis]:
    """The keys and the store's client of ``room``'s home shard (its members, room events)."""
    shard = store.room_home(room)
    return store.keys(shard), store.client_for(shard)


def mark_ended(r: redis.Redis, cid: str, *, uid: int | None = None) -> None:
    """Leave a connection as end.lua does when a sweep or a kick ends it: its hash replaced by
    the tombstone heartbeat.lua reads (a deleted hash without one reads as "lost by the
    store", which the socket re-asserts instead of closing).

    With ``uid``, on the user's shard through the store's client of it (every store shape);
    without, at shard 0's name on ``r`` (one Redis only)."""
    if uid is None:
        key, client = store.keys().conn(cid), r
    else:
        shard = store.user_home(uid)
        key, client = store.keys(shard).conn(cid), store.client_for(shard)
    client.delete(key)
    client.hset(key, "ended", store.now_ms())
