"""The process registry: each web process's record and the sockets it holds."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import redis
import redis.asyncio as aredis

from presence.store.clients import now_ms
from presence.store.keys import control_keys, keys


# Written by presence.live.processes, read by it and by presence.jobs.reconcile. Each web
# process keeps a record hash, an entry in the {P}:procs index and the set of connection ids
# it holds; all three expire when the process stops refreshing them, so a crashed process
# disappears.
def _plan_publish_process(
    pipe: Any,
    proc_id: str,
    record: Mapping[str, str | int | float],
    *,
    added: Iterable[str],
    removed: Iterable[str],
    full: Iterable[str] | None,
    ttl_ms: int,
    now: int,
) -> None:
    k = control_keys()
    conns = k.proc_conns(proc_id)
    if full is not None:
        # A rewrite: the set was lost (expired, Redis restarted) or never written.
        pipe.delete(conns)
        added, removed = full, ()
    # WARNING: bounded by the process's own socket churn since its last refresh (or its
    # socket count on a rewrite), sent in slices so no single command grows without limit.
    removed, added = list(removed), list(added)
    for i in range(0, len(removed), PROCESS_CONNS_SLICE):
        pipe.srem(conns, *removed[i : i + PROCESS_CONNS_SLICE])
    for i in range(0, len(added), PROCESS_CONNS_SLICE):
        pipe.sadd(conns, *added[i : i + PROCESS_CONNS_SLICE])
    pipe.pexpire(conns, ttl_ms)
    pipe.scard(conns)
    pipe.hset(k.proc(proc_id), mapping=dict(record))
    pipe.pexpire(k.proc(proc_id), ttl_ms)
    pipe.zadd(k.procs, {proc_id: now})
    # The index forgets processes whose record has expired (at most a handful per call).
    pipe.zremrangebyscore(k.procs, "-inf", f"({now - ttl_ms}")


# Members per SADD/SREM when a process publishes its connection ids.
PROCESS_CONNS_SLICE = 1000


async def publish_process(
    client: aredis.Redis,
    proc_id: str,
    record: Mapping[str, str | int | float],
    *,
    added: Iterable[str] = (),
    removed: Iterable[str] = (),
    full: Iterable[str] | None = None,
    ttl_ms: int,
    now: int | None = None,
) -> int:
    """Refresh one process's record and connection set (one MULTI); returns the set's size.

    ``added``/``removed`` are the changes since the last call; ``full`` rewrites the set.
    The caller compares the size returned with what it holds and rewrites on a mismatch.
    """
    pipe = client.pipeline(transaction=True)
    _plan_publish_process(
        pipe,
        proc_id,
        record,
        added=added,
        removed=removed,
        full=full,
        ttl_ms=ttl_ms,
        now=now or now_ms(),
    )
    results = await pipe.execute()
    # Results: [DEL], SREM..., SADD..., PEXPIRE, SCARD, HSET, PEXPIRE, ZADD, ZREMRANGEBYSCORE
    return int(results[-5])


def _plan_remove_process(pipe: Any, proc_id: str) -> None:
    k = control_keys()
    pipe.delete(k.proc(proc_id), k.proc_conns(proc_id))
    pipe.zrem(k.procs, proc_id)


def remove_process(client: redis.Redis, proc_id: str) -> None:
    """Drop a process's record and connection set (it is shutting down)."""
    pipe = client.pipeline(transaction=True)
    _plan_remove_process(pipe, proc_id)
    pipe.execute()


async def aremove_process(client: aredis.Redis, proc_id: str) -> None:
    """Async twin of :func:`remove_process`."""
    pipe = client.pipeline(transaction=True)
    _plan_remove_process(pipe, proc_id)
    await pipe.execute()


# Most processes one listing reads; far above any deployment's web process count.
PROCESS_LIST_MAX = 1000


def read_processes(client: redis.Redis) -> list[dict[str, str]]:
    """Records of the processes registered and not expired, oldest refresh first.

    Two round trips: the index, then every record in one pipeline. Index entries whose
    record expired are skipped (the next refresh of any process prunes them).
    """
    k = control_keys()
    ids: Any = client.zrange(k.procs, 0, PROCESS_LIST_MAX - 1)
    if not ids:
        return []
    pipe = client.pipeline(transaction=False)
    for proc_id in ids:
        pipe.hgetall(k.proc(proc_id))
    return [dict(rec) for rec in pipe.execute() if rec]


def scan_live_connections(
    client: redis.Redis, cursor: int, count: int, *, now: int | None = None, shard: int
) -> tuple[int, list[str]]:
    """One ZSCAN page of ``shard``'s expiry index (``client`` holds the shard): (next cursor,
    ids of connections still live)."""
    now = now or now_ms()
    next_cursor, members = client.zscan(keys(shard).conns, cursor, count=count)  # type: ignore[misc]
    return int(next_cursor), [str(cid) for cid, score in members if score > now]


def connections_held(client: redis.Redis, proc_ids: Sequence[str], cids: Sequence[str]) -> set[str]:
    """The ``cids`` some process of ``proc_ids`` holds (one pipeline of SMISMEMBER)."""
    if not cids or not proc_ids:
        return set()
    k = control_keys()
    pipe = client.pipeline(transaction=False)
    for proc_id in proc_ids:
        pipe.execute_command("SMISMEMBER", k.proc_conns(proc_id), *cids)
    held: set[str] = set()
    for flags in pipe.execute():
        held.update(cid for cid, flag in zip(cids, flags, strict=True) if int(flag) == 1)
    return held


def connections_connected_before(
    client: redis.Redis,
    cids: Sequence[str],
    before_ms: int,
    *,
    now: int | None = None,
    shard: int,
) -> list[str]:
    """The ``cids`` of ``shard`` (held by ``client``) still live that connected before
    ``before_ms`` (one pipeline)."""
    if not cids:
        return []
    k, now = keys(shard), now or now_ms()
    pipe = client.pipeline(transaction=False)
    for cid in cids:
        pipe.zscore(k.conns, cid)
        pipe.hget(k.conn(cid), "at")
    raw = pipe.execute()
    out = []
    for i, cid in enumerate(cids):
        score, at = raw[2 * i], raw[2 * i + 1]
        if score is not None and score > now and at is not None and int(at) < before_ms:
            out.append(cid)
    return out


def read_task_runs(client: redis.Redis, tasks: Sequence[str]) -> dict[str, dict[str, str]]:
    """The run hashes of several tasks in one round trip (see :func:`read_task_run`)."""
    pipe = client.pipeline(transaction=False)
    for task in tasks:
        pipe.hgetall(keys().task_last(task))
    return {task: dict(raw) for task, raw in zip(tasks, pipe.execute(), strict=True)}
