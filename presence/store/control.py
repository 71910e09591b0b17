"""Handler control: the set of message types an operator disabled, with its version."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import redis
import redis.asyncio as aredis
from redis.exceptions import WatchError

from presence.store.keys import control_keys

# handler control (presence.handlers.lifecycle)
# The RegisteredHandler rows are the truth about which handlers are disabled; these two keys
# carry that truth to every web process, which polls the version (one round trip per poll,
# never per message) and re-reads the set when it moved.
HandlerControl = tuple[int | None, frozenset[str]]
# WATCH conflicts need a concurrent publisher; a handful of retries covers any real contention.
PUBLISH_ATTEMPTS = 20


def publish_disabled_handlers(
    client: redis.Redis, read: Callable[[], Iterable[str]], *, only_if_changed: bool = False
) -> int | None:
    """Replace the disabled set with ``read()`` and bump the version; returns the new version.

    ``read`` (the database query) runs while the version key is WATCHed: a publisher that
    read the database before a concurrent publisher wrote Redis fails its EXEC and reads
    again, so the set always ends up equal to the newest database state.

    ``only_if_changed`` (process start-up) writes nothing, returning None, when Redis already
    holds that set, or holds nothing and nothing is disabled: starting a process then leaves
    Redis untouched. Operator changes always publish, so every watcher sees a new version.
    """
    k = control_keys()
    for _ in range(PUBLISH_ATTEMPTS):
        with client.pipeline(transaction=True) as pipe:
            try:
                pipe.watch(k.handlers_version)
                types = sorted(set(read()))
                if only_if_changed:
                    # Immediate commands while WATCHing: part of the same optimistic check.
                    version = pipe.get(k.handlers_version)
                    current = sorted(pipe.smembers(k.handlers_disabled))  # type: ignore[arg-type]
                    if current == types and (version is not None or not types):
                        pipe.unwatch()
                        return None
                pipe.multi()
                pipe.delete(k.handlers_disabled)
                if types:
                    pipe.sadd(k.handlers_disabled, *types)
                pipe.incr(k.handlers_version)
                return int(pipe.execute()[-1])
            except WatchError:
                continue
    raise RuntimeError(f"could not publish disabled handlers in {PUBLISH_ATTEMPTS} attempts")


def _queue_handler_control(pipe: Any) -> None:
    k = control_keys()
    pipe.get(k.handlers_version)
    pipe.smembers(k.handlers_disabled)


def _parse_handler_control(version: Any, members: Iterable[str]) -> HandlerControl:
    return (int(version) if version is not None else None), frozenset(members)


def read_handler_control(client: redis.Redis) -> HandlerControl:
    """(version, disabled types); version is None when nothing was ever published."""
    pipe = client.pipeline(transaction=False)
    _queue_handler_control(pipe)
    return _parse_handler_control(*pipe.execute())


async def aread_handler_control(client: aredis.Redis) -> HandlerControl:
    """Async twin of :func:`read_handler_control`: one round trip."""
    pipe = client.pipeline(transaction=False)
    _queue_handler_control(pipe)
    return _parse_handler_control(*await pipe.execute())
