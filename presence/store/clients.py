"""Redis clients (sync, and asyncio per event loop), bounded waits, and the time base."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import redis
import redis.asyncio as aredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import ExponentialBackoff, NoBackoff
from redis.retry import Retry

from presence.conf import app_settings
from presence.loops import LoopLocal
from presence.redis_url import RedisTarget, parse_redis_url
from presence.store.faults import Bounded
from presence.store.shards import shard_count


def now_ms() -> int:
    """Wall-clock milliseconds, the time base of every score."""
    return int(time.time() * 1000)


_sync_clients: dict[str, redis.Redis] = {}
_async_clients: LoopLocal[dict[str, aredis.Redis]] = LoopLocal(lambda loop: {})


def client_options(*, for_asyncio: bool = False) -> dict[str, Any]:
    """Options of every presence Redis client: bounded waits everywhere.

    A command waits at most PRESENCE_REDIS_SOCKET_TIMEOUT for its answer and a new connection
    PRESENCE_REDIS_CONNECT_TIMEOUT; a failed command is retried once (a pooled connection
    may be stale after a Redis restart). Without these, a paused Redis held callers for as
    long as it stayed paused, and redis-py's default three retries multiplied every wait.
    """
    retry_class = AsyncRetry if for_asyncio else Retry
    return {
        "decode_responses": True,
        "health_check_interval": 30,
        # WARNING: asyncio clients get no socket_timeout. redis-py then wraps every send in
        # asyncio.wait_for, which on Python 3.11 can swallow a cancellation (a cancelled
        # heartbeat batch kept running, and a closing event loop waited on it). Their reads
        # are bounded by the callers with asyncio.timeout instead (see bounded()).
        "socket_timeout": None if for_asyncio else app_settings.REDIS_SOCKET_TIMEOUT,
        "socket_connect_timeout": app_settings.REDIS_CONNECT_TIMEOUT,
        "retry": retry_class(ExponentialBackoff(cap=0.2, base=0.05), 1),
    }


def bounded(extra: float = 0.0) -> Bounded:
    """``async with bounded():`` around an asyncio Redis call: at most the socket timeout
    (plus ``extra``, e.g. a blocking read's BLOCK time), then StoreTimeoutError (a TimeoutError)."""
    return Bounded(app_settings.REDIS_SOCKET_TIMEOUT + extra)


# Seconds a sentinel may take to name the primary before the next sentinel is asked. A
# sentinel answers from memory; one that hangs (paused, its host overloaded) must leave time,
# within the caller's own bound, to ask the others.
SENTINEL_TIMEOUT = 1.0


def _sentinel_options(options: dict[str, Any]) -> dict[str, Any]:
    """Options of the connections to the sentinels (asked on every new connection).

    Asyncio included: a bounded question beats the wait_for caveat above here, since without
    it a hung first sentinel would keep every new connection from the others' answer.
    """
    return {
        "socket_timeout": min(app_settings.REDIS_SOCKET_TIMEOUT, SENTINEL_TIMEOUT),
        "socket_connect_timeout": min(options["socket_connect_timeout"], SENTINEL_TIMEOUT),
        "retry": (
            async_sentinel_retry() if isinstance(options["retry"], AsyncRetry) else sentinel_retry()
        ),
    }


def sentinel_retry() -> Retry:
    """The retry policy of a sync client of one sentinel: none, the next sentinel is the
    retry.

    redis-py 7 retries a connection's whole connect and handshake by its retry policy (a
    client's default: three times, with backoff), so a hung sentinel held a new connection
    for 6 s and more, past the caller's bound.
    """
    return Retry(NoBackoff(), 0)


def async_sentinel_retry() -> AsyncRetry:
    """:func:`sentinel_retry` for asyncio clients."""
    return AsyncRetry(NoBackoff(), 0)


def _sync_client(target: RedisTarget) -> redis.Redis:
    options = client_options()
    if not target.is_sentinel:
        return redis.Redis.from_url(target.url, **options)
    from redis.sentinel import Sentinel

    # The pool asks a sentinel for the primary on each new connection, and drops its
    # connections when the primary it reached answers READONLY (it was demoted): the retry
    # in ``options`` then reconnects to the new primary.
    sentinel = Sentinel(
        list(target.sentinels),
        sentinel_kwargs=target.sentinel_kwargs(**_sentinel_options(options)),
    )
    return sentinel.master_for(target.master_name, **target.master_kwargs(), **options)


def _async_client(target: RedisTarget) -> aredis.Redis:
    options = client_options(for_asyncio=True)
    if not target.is_sentinel:
        return aredis.Redis.from_url(target.url, **options)
    from redis.asyncio.sentinel import Sentinel

    sentinel = Sentinel(
        list(target.sentinels),
        sentinel_kwargs=target.sentinel_kwargs(**_sentinel_options(options)),
    )
    return sentinel.master_for(target.master_name, **target.master_kwargs(), **options)


def sync_client_for(url: str) -> redis.Redis:
    """The process-wide sync client of ``url`` (any form of presence/redis_url.py)."""
    client = _sync_clients.get(url)
    if client is None:
        client = _sync_clients[url] = _sync_client(parse_redis_url(url))
    return client


def async_client_for(url: str, *, blocking: bool = False) -> aredis.Redis:
    """This event loop's async client of ``url`` (``blocking``: see get_async_redis)."""
    per_loop = _async_clients.get()
    key = url + "#blocking" if blocking else url
    client = per_loop.get(key)
    if client is None:
        client = per_loop[key] = _async_client(parse_redis_url(url))
    return client


def get_redis() -> redis.Redis:
    """Process-wide sync client (thread-safe connection pool) of REDIS_URL: control keys, and
    the presence store too when it is one Redis (presence/store/topology.py).

    ``REDIS_URL`` may be any form of presence/redis_url.py: a Sentinel URL gives a client on
    the current primary that follows a failover.
    """
    return sync_client_for(app_settings.REDIS_URL)


def get_async_redis(*, blocking: bool = False) -> aredis.Redis:
    """Async client of REDIS_URL for the running event loop (asyncio connections cannot
    cross loops).

    ``blocking``: a separate client for the background readers' blocking reads (XREAD BLOCK,
    XREADGROUP BLOCK). Each holds a connection for seconds; on the shared pool they would
    make the hot path open new connections (a handshake on a heartbeat's way).
    """
    return async_client_for(app_settings.REDIS_URL, blocking=blocking)


def live_async_clients() -> list[aredis.Redis]:
    """The async clients this event loop created so far, REDIS_URL's and each shard URL's
    (store/switchover.py resets them; Cluster clients follow MOVED on their own)."""
    return list(_async_clients.get().values())


_reset_hooks: list[Callable[[], None]] = []


def on_reset(hook: Callable[[], None]) -> None:
    """Run ``hook`` on :func:`reset_clients` (topology.py forgets its Cluster clients)."""
    _reset_hooks.append(hook)


def reset_clients() -> None:
    """Forget cached clients (after the Redis URL changed, e.g. in tests)."""
    for client in _sync_clients.values():
        client.close()
    _sync_clients.clear()
    _async_clients.clear()
    for hook in _reset_hooks:
        hook()


def ttl_ms() -> int:
    return int(app_settings.TTL * 1000)


def grace_ms() -> int:
    return int(app_settings.KEY_GRACE * 1000)


def log_maxlen() -> int:
    """Entries each shard's stream is trimmed to (``MAXLEN ~``).

    ``PRESENCE_EVENT_LOG_MAXLEN`` is the length of the whole log, divided evenly over the
    shards (rounded up). Spread over 64 shards, traffic fills each stream at a 64th of the
    rate one stream had, so each keeps the same stretch of time: the log's memory and how long
    a reader may be away are what they were with one stream, not 64 times that.
    """
    return max(1, -(-app_settings.EVENT_LOG_MAXLEN // shard_count()))
