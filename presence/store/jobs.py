"""Background jobs' state: sweep claims, task locks and runs, stats-flush claims, reaper reads.

Per shard: each function takes ``shard``, the logical shard whose keys it reads and writes,
and the client passed must hold that shard (``topology.client_for(shard)``). Task-lock and
run functions take ``shard=None`` for a global task (reconcile): its keys are control keys
on REDIS_URL (``get_redis()``). The default ``shard=0`` keeps single-shard callers working.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from presence.store.clients import grace_ms, now_ms
from presence.store.connections import ConnRef
from presence.store.keys import ControlKeys, Keys, control_keys, keys
from presence.store.scripts import script
from presence.store.topology import client_for


# --------------------------------------------------------------------------- sweep
# sweep (presence.jobs.sweep): claims of expired connections, task locks and run metrics.
@dataclass(frozen=True)
class SweepClaim:
    """One expired connection a sweep claimed; ``uid`` is None when its hash is gone."""

    cid: str
    expiry: int  # ms: last heartbeat + TTL, the session's end time
    uid: int | None = None
    username: str = ""
    channel: str = ""
    rooms: tuple[str, ...] = ()

    @property
    def ref(self) -> ConnRef:
        assert self.uid is not None
        return ConnRef(self.cid, self.uid, self.rooms)


@dataclass
class ClaimBatch:
    """What one claim_expired.lua call handed to this sweep."""

    deadline: int  # the claim deadline every claim carries; ack with it
    reclaimed: int  # how many were taken over from a sweep that died
    claims: list[SweepClaim]


def _task_keys(shard: int | None) -> Keys | ControlKeys:
    """A per-shard task's keys (its shard's), or a global task's (``shard=None``: control)."""
    return control_keys() if shard is None else keys(shard)


def score_ms(value: Any) -> int:
    # Scores come back as text; a large integer score may be written in exponent form.
    return int(float(value))


def claim_expired(
    client: redis.Redis,
    *,
    batch: int,
    claim_timeout_ms: int,
    now: int | None = None,
    shard: int,
) -> ClaimBatch:
    """Claim up to ``batch`` expired connections, with what ending them needs.

    Two round trips: the claim script, then one pipeline reading each claimed connection's
    hash and rooms. Nothing else; with nothing expired this is one cheap round trip.
    """
    k, now = keys(shard), now or now_ms()
    raw = script("claim_expired").run(
        client,
        [k.conns, k.sweeping, k.sweeping_exp, k.users],
        [now, batch, claim_timeout_ms, grace_ms()],
    )
    deadline, reclaimed = int(raw[0]), int(raw[1])
    pairs = [(str(raw[i]), score_ms(raw[i + 1])) for i in range(2, len(raw), 2)]
    if not pairs:
        return ClaimBatch(deadline, reclaimed, [])
    pipe = client.pipeline(transaction=False)
    for cid, _ in pairs:
        pipe.hmget(k.conn(cid), ["uid", "username", "channel"])
        pipe.smembers(k.conn_rooms(cid))
    details = pipe.execute()
    claims = []
    for i, (cid, expiry) in enumerate(pairs):
        (uid, username, channel), rooms = details[2 * i], details[2 * i + 1]
        claims.append(
            SweepClaim(
                cid=cid,
                expiry=expiry,
                uid=int(uid) if uid is not None else None,
                username=username or "",
                channel=channel or "",
                rooms=tuple(sorted(rooms)),
            )
        )
    return ClaimBatch(deadline, reclaimed, claims)


def ack_swept(client: redis.Redis, deadline: int, cids: Sequence[str], *, shard: int) -> int:
    """Release this sweep's claims of ``cids`` (claims re-taken by another sweep stay)."""
    if not cids:
        return 0
    k = keys(shard)
    return int(script("sweep_ack").run(client, [k.sweeping, k.sweeping_exp], [deadline, *cids]))


def acquire_task_lock(
    client: redis.Redis, task: str, ttl_ms: int, *, shard: int | None = 0
) -> str | None:
    """Take the lock of ``task`` for ``ttl_ms``; the token to release it, or None if held."""
    token = uuid.uuid4().hex
    if client.set(_task_keys(shard).task_lock(task), token, nx=True, px=max(1, ttl_ms)):
        return token
    return None


def task_lock_held(client: redis.Redis, task: str, *, shard: int | None = 0) -> bool:
    """Whether a run of ``task`` holds its lock now (a hint: it may end at any moment)."""
    return bool(client.exists(_task_keys(shard).task_lock(task)))


def claim_task_period(
    client: redis.Redis, task: str, ttl_ms: int, *, shard: int | None = 0
) -> bool:
    """Claim the current period of ``task`` (SET NX PX): False when a run holds it."""
    return bool(
        client.set(_task_keys(shard).task_period(task), now_ms(), nx=True, px=max(1, ttl_ms))
    )


def release_task_lock(client: redis.Redis, task: str, token: str, *, shard: int | None = 0) -> bool:
    """Release the lock if this token still holds it (compare-and-delete in Lua)."""
    return (
        int(script("lock_release").run(client, [_task_keys(shard).task_lock(task)], [token])) == 1
    )


def extend_task_lock(
    client: redis.Redis, task: str, token: str, ttl_ms: int, *, shard: int | None = 0
) -> bool:
    """Keep holding the lock for ``ttl_ms`` more if this token still holds it (Lua)."""
    ks = [_task_keys(shard).task_lock(task)]
    return int(script("lock_extend").run(client, ks, [token, max(1, ttl_ms)])) == 1


def record_task_run(
    client: redis.Redis,
    task: str,
    last: Mapping[str, int | str],
    totals: Mapping[str, int],
    counters: Mapping[str, int] | None = None,
    *,
    shard: int | None = 0,
) -> None:
    """Store a run's metrics: ``last`` replaces the last-run fields, ``totals`` add up.

    ``counters`` go into the live stats hash too, so the per-minute buckets keep a history
    of task activity (skipped runs included) next to the hot-path counters.
    """
    tk = _task_keys(shard)
    pipe = client.pipeline(transaction=False)
    if last:
        pipe.hset(tk.task_last(task), mapping=dict(last))
    for name, inc in totals.items():
        pipe.hincrby(tk.task_last(task), name, inc)
    # The counters go to the stats hash of ``shard`` (a global task's: shard 0's) on that
    # shard's own client: the stats flush claims each shard's hash there. ``client`` is the
    # record's (REDIS_URL for the periodic tasks' records): on a Cluster or shard URLs it is
    # not the shard's, and counters written through it were never flushed.
    counting = client_for(shard or 0)
    stats = counting.pipeline(transaction=False) if counting is not client else pipe
    for name, inc in (counters or {}).items():
        if inc:
            stats.hincrby(keys(shard or 0).stats, name, inc)
    pipe.execute()
    if stats is not pipe:
        stats.execute()


def read_task_run(client: redis.Redis, task: str, *, shard: int | None = 0) -> dict[str, str]:
    """The metrics hash of ``task`` (last run and totals), for admin and metrics."""
    return dict(client.hgetall(_task_keys(shard).task_last(task)))  # type: ignore[arg-type]


# --------------------------------------------------------------------------- stats flush
# stats flush (presence.jobs.flush): claims of the live counters, live heartbeat scores.
def claim_stats(client: redis.Redis, flush_id: str, *, now: int | None = None, shard: int) -> bool:
    """Move the live counters to the claim of ``flush_id``; False when there were none."""
    k = keys(shard)
    ks = [k.stats, k.stats_claim(flush_id), k.stats_claims]
    return int(script("stats_claim").run(client, ks, [now or now_ms(), flush_id])) == 1


def list_stats_claims(client: redis.Redis, limit: int, *, shard: int) -> list[tuple[str, int]]:
    """Unreleased claims, oldest first: (flush id, claim time ms)."""
    raw = client.zrange(keys(shard).stats_claims, 0, limit - 1, withscores=True)
    return [(str(fid), score_ms(score)) for fid, score in raw]  # type: ignore[union-attr]


def read_stats_claim(client: redis.Redis, flush_id: str, *, shard: int) -> dict[str, int]:
    """The counters of one claim (empty when the claim was released already)."""
    raw: dict[str, str] = client.hgetall(keys(shard).stats_claim(flush_id))  # type: ignore[assignment]
    return {name: int(value) for name, value in raw.items()}


def release_stats_claim(client: redis.Redis, flush_id: str, *, shard: int) -> bool:
    """Drop a claim whose counters are committed to the database."""
    k = keys(shard)
    ks = [k.stats_claim(flush_id), k.stats_claims]
    return int(script("stats_release").run(client, ks, [flush_id])) == 1


def live_connections_page(
    client: redis.Redis, low: int, skip: int, count: int, *, shard: int
) -> list[tuple[str, int]]:
    """Connections with expiry >= ``low``, ascending, after skipping ``skip``: (cid, expiry)."""
    raw = client.zrangebyscore(
        keys(shard).conns, low, "+inf", start=skip, num=count, withscores=True
    )
    return [(str(cid), score_ms(score)) for cid, score in raw]  # type: ignore[union-attr]


def get_heartbeat_mark(client: redis.Redis, *, shard: int) -> int | None:
    """Expiry score below which every live session's last heartbeat is in the database."""
    value = client.get(keys(shard).heartbeat_mark)
    return int(value) if value is not None else None  # type: ignore[arg-type]


def set_heartbeat_mark(client: redis.Redis, mark: int, *, shard: int) -> None:
    client.set(keys(shard).heartbeat_mark, mark)


# --------------------------------------------------------------------------- session reaper
def known_connections(client: redis.Redis, cids: Sequence[str], *, shard: int) -> set[str]:
    """The ``cids`` presence still tracks (in the expiry index or claimed by a sweep)."""
    if not cids:
        return set()
    k = keys(shard)
    pipe = client.pipeline(transaction=False)
    for cid in cids:
        pipe.zscore(k.conns, cid)
        pipe.zscore(k.sweeping, cid)
    found = pipe.execute()
    return {
        cid
        for i, cid in enumerate(cids)
        if found[2 * i] is not None or found[2 * i + 1] is not None
    }
