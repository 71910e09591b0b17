"""Reads for the metrics collector on every scrape: O(1) or O(log N) commands only."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from presence.store.clients import now_ms
from presence.store.keys import keys
from presence.store.topology import groups

# Read by the metrics collector on every scrape (presence.ops.collector): O(1) or O(log N)
# commands only, never a scan of the keyspace or of a large index.


@dataclass
class ScrapeReadings:
    """What one scrape reads from Redis."""

    users_online: int
    connections_online: int
    tasks: dict[str, dict[str, str]]


def read_scrape(tasks: Sequence[str], *, now: int | None = None) -> ScrapeReadings:
    """Online counts summed over every shard (ZCOUNT, O(log N) each) and the run hashes of
    ``tasks``: one pipeline per node (the runs ride with shard 0's)."""
    now = now or now_ms()
    users = conns = 0
    runs: list[Any] = []
    for client, shards in groups():
        pipe = client.pipeline(transaction=False)
        for shard in shards:
            pipe.zcount(keys(shard).users, f"({now}", "+inf")
            pipe.zcount(keys(shard).conns, f"({now}", "+inf")
        if 0 in shards:
            for task in tasks:
                pipe.hgetall(keys(0).task_last(task))
        result = pipe.execute()
        counted = result[: 2 * len(shards)]
        users += sum(int(n) for n in counted[0::2])
        conns += sum(int(n) for n in counted[1::2])
        runs += result[2 * len(shards) :]
    return ScrapeReadings(
        users_online=users,
        connections_online=conns,
        tasks={task: dict(raw) for task, raw in zip(tasks, runs, strict=True)},
    )
