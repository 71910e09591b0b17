"""Reads for the metrics collector on every scrape: O(1) or O(log N) commands only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis

from presence.store.clients import now_ms
from presence.store.keys import keys

# Read by the metrics collector on every scrape (presence.ops.collector): O(1) or O(log N)
# commands only, never a scan of the keyspace or of a large index.


@dataclass
class ScrapeReadings:
    """What one scrape reads from Redis."""

    users_online: int
    connections_online: int
    tasks: dict[str, dict[str, str]]


def read_scrape(
    client: redis.Redis, tasks: Sequence[str], *, now: int | None = None
) -> ScrapeReadings:
    """Online counts (ZCOUNT, O(log N)) and the run hashes of ``tasks``, in one round trip."""
    k, now = keys(), now or now_ms()
    pipe = client.pipeline(transaction=False)
    pipe.zcount(k.users, f"({now}", "+inf")
    pipe.zcount(k.conns, f"({now}", "+inf")
    for task in tasks:
        pipe.hgetall(k.task_last(task))
    users, conns, *runs = pipe.execute()
    return ScrapeReadings(
        users_online=int(users),
        connections_online=int(conns),
        tasks={task: dict(raw) for task, raw in zip(tasks, runs, strict=True)},
    )
