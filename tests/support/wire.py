"""Counting the store's Redis round trips on the wire, and reading counters summed over shards.

A round trip is one ``send_packed_command`` of a redis-py asyncio connection: a pipeline
packs all its commands into one write, a single command is one write too. ``ScriptTrips``
counts the writes that carry an ``EVALSHA`` (the store's scripts; the channel layer runs
its Lua with ``EVAL``), per server port, so a test can hold the hot path to "one round trip
per node" while the server's command log still says which commands went out.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from redis.asyncio.connection import AbstractConnection

from tests.support.homes import every_shard


def _carries_evalsha(command: Any) -> bool:
    chunks = [command] if isinstance(command, bytes | str) else list(command)
    return any(
        b"\r\nEVALSHA\r\n" in (c.encode() if isinstance(c, str) else bytes(c)) for c in chunks
    )


class ScriptTrips:
    """Round trips carrying store scripts (EVALSHA), per server port, since ``clear()``."""

    def __init__(self) -> None:
        self.by_port: Counter[int] = Counter()

    def install(self, mp: pytest.MonkeyPatch) -> None:
        """Count every write of every asyncio connection of this process from now on."""
        send = AbstractConnection.send_packed_command
        trips = self

        async def counting(self: Any, command: Any, check_health: bool = True) -> None:
            if _carries_evalsha(command):
                trips.by_port[int(getattr(self, "port", 0) or 0)] += 1
            await send(self, command, check_health)

        mp.setattr(AbstractConnection, "send_packed_command", counting)

    def clear(self) -> None:
        """Forget what was counted so far."""
        self.by_port.clear()

    def total(self) -> int:
        """Round trips carrying EVALSHA since ``clear()``, every server together."""
        return sum(self.by_port.values())


@contextmanager
def counting_script_trips() -> Iterator[ScriptTrips]:
    """A ``ScriptTrips`` counting inside the ``with`` block (a test module's fixture wraps it)."""
    trips = ScriptTrips()
    mp = pytest.MonkeyPatch()
    trips.install(mp)
    try:
        yield trips
    finally:
        mp.undo()


def stats_sum(r: redis.Redis) -> Counter[str]:
    """Every shard's live counters (``<shard tag>:stats``) summed, as the stats flush sums
    them: counters land on whichever shard a batch's section carried them."""
    pipe = r.pipeline(transaction=False)
    for k in every_shard():
        pipe.hgetall(k.stats)
    total: Counter[str] = Counter()
    for part in pipe.execute():
        for name, value in part.items():
            # Bytes from a client without decode_responses (the command log's own).
            total[name.decode() if isinstance(name, bytes) else str(name)] += int(value)
    return total
