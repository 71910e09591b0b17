"""What counts as "the store is away": the failures a failover, a restart or a pause cause.

A Redis primary that fails over, restarts or stalls shows itself to a client in a few ways:
refused or reset connections and timeouts; ``READONLY`` from a primary that was demoted to a
replica while a connection still pointed at it; ``LOADING`` from a server reading its data
set back; ``MASTERDOWN`` from a replica that lost its primary; ``NOREPLICAS`` from a
primary configured with ``min-replicas-to-write`` that lost its replicas (a primary being
failed over away from); ``TRYAGAIN``/``CLUSTERDOWN`` during a resharding or a Cluster
failover. All of them end by themselves, so callers hold or
retry the work (presence/live/batching.py) or answer ``unavailable``; none of them is a bug,
and none deserves a traceback (docs/reliability.md).
"""

from __future__ import annotations

import asyncio
from types import TracebackType

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

# Error replies that mean "this server cannot take the command now", not "the command is bad".
TRANSIENT_REPLIES = (
    "READONLY",
    "LOADING",
    "MASTERDOWN",
    "TRYAGAIN",
    "CLUSTERDOWN",
    "NOREPLICAS",
)


class StoreTimeoutError(RedisTimeoutError, TimeoutError):
    """A bounded store call (:func:`bounded`) got no answer in time.

    Both a redis-py and a builtin TimeoutError: callers that caught ``TimeoutError`` from
    ``asyncio.timeout`` before still do.
    """


class StoreUnavailableError(RedisConnectionError):
    """Work was held while the store was away, longer than its limit allows."""


def is_unavailable(exc: BaseException) -> bool:
    """Whether ``exc`` says the store is away (and will be back), not that the call is wrong."""
    if isinstance(exc, (RedisConnectionError, RedisTimeoutError, TimeoutError, OSError)):
        return True
    if isinstance(exc, RuntimeError) and "handler is closed" in str(exc):
        # asyncio's answer to a write on a transport closed under the command: what the
        # switch-over does to a connection still in use when a Sentinel shard fails over.
        return True
    if isinstance(exc, ResponseError):
        # A script's error reply is prefixed by the script's context on some versions
        # ("ERR Error running script ...: READONLY ..."), so look at the words, not the start.
        # Redis 7 writes a script's inner error as "... @user_script: 33: -READONLY ...".
        words = str(exc)[:300].replace(":", " ").split()
        return any(word.lstrip("-") in TRANSIENT_REPLIES for word in words)
    return False


class Bounded:
    """``async with bounded():`` -- at most ``seconds``, then :class:`StoreTimeoutError`."""

    __slots__ = ("_seconds", "_timeout")

    def __init__(self, seconds: float) -> None:
        self._seconds = seconds
        self._timeout = asyncio.timeout(seconds)

    async def __aenter__(self) -> Bounded:
        await self._timeout.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            await self._timeout.__aexit__(exc_type, exc, tb)
        except TimeoutError as timeout:
            if isinstance(timeout, StoreTimeoutError):
                raise
            raise StoreTimeoutError(
                f"the presence store did not answer within {self._seconds:g} s"
            ) from None
