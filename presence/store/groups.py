"""Consumer groups over the event log (``{P}:events``): create, read, claim, ack, backlog, prune.

Every background reader of the log is a consumer group: the connection-session writers
(``sessions``), the Django-signal sender (``hooks``) and the webhook router (``webhooks``).
Each acknowledges an entry only once its work is done, so what a killed reader took is read
again. Group names are not keys: they live inside the stream, in its slot.

Each call names its group; the sync functions serve Celery tasks, the async twins the web
processes' session writers.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aredis

from presence.store.clients import bounded
from presence.store.keys import keys

# The groups over the event log, and who reads each (docs/architecture.md).
SESSION_LOG_GROUP = "sessions"  # connection-session rows (presence.jobs.sessionlog)
HOOKS_GROUP = "hooks"  # Django signals (presence.hooks.dispatch)
WEBHOOKS_GROUP = "webhooks"  # the webhook outbox (presence.hooks.webhooks)
GROUPS = (SESSION_LOG_GROUP, HOOKS_GROUP, WEBHOOKS_GROUP)

# XAUTOCLAIM rounds per claim call: bounds the work one call does for one dead consumer.
CLAIM_ROUNDS = 10
# Undelivered entries counted by group_backlog (one XRANGE page).
BACKLOG_PAGE = 10_000
# WARNING: what the dashboard and each scrape read at most per group on Redis < 7 (no lag
# in XINFO GROUPS): a bigger backlog shows as this many.
UNREAD_PAGE = 1_000


@dataclass(frozen=True)
class GroupEntry:
    """One event-log entry as a reader got it; ``fields`` is empty when it was trimmed away."""

    id: str
    fields: dict[str, str]


def stream_id_order(entry_id: str) -> tuple[int, int]:
    """Sort key of a stream id (``<ms>-<seq>``): ids do not sort as strings."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or 0)


def _is_busygroup(exc: redis.ResponseError) -> bool:
    return str(exc).startswith("BUSYGROUP")


def _is_nogroup(exc: redis.ResponseError) -> bool:
    return str(exc).startswith("NOGROUP")


def _plan_read(
    group: str, consumer: str, count: int, after: str | None, block_ms: int | None
) -> tuple[list[Any], dict[str, Any]]:
    # ">": entries never delivered to the group; an id: this consumer's own pending entries
    # after it (trimmed ones come back with no fields). Only new entries are worth waiting for.
    streams = {keys().events: after if after is not None else ">"}
    return [group, consumer, streams], {
        "count": count,
        "block": block_ms if after is None else None,
    }


def _parse_read(raw: Any) -> list[GroupEntry]:
    return [
        GroupEntry(str(entry_id), dict(fields or {}))
        for _stream, entries in raw or []
        for entry_id, fields in entries
    ]


def _plan_claim(group: str, consumer: str, min_idle_ms: int, start: str, count: int) -> list[Any]:
    # Not JUSTID: redis-py drops the cursor of a JUSTID reply. Claimed entries join this
    # consumer's pending list, where the caller reads them (trimmed ones included, by id).
    return [
        "XAUTOCLAIM",
        keys().events,
        group,
        consumer,
        max(0, min_idle_ms),
        start,
        "COUNT",
        count,
    ]


def _parse_claim(raw: Any) -> tuple[str, int, int]:
    """(next start, entries claimed, entries trimmed away); Redis >= 7 reports the latter."""
    deleted = raw[2] if len(raw) > 2 else []
    return str(raw[0]), len(raw[1]), len(deleted)


def ensure_group(client: redis.Redis, group: str) -> bool:
    """Create ``group``, reading from the log's start; False when it existed."""
    try:
        client.xgroup_create(keys().events, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if not _is_busygroup(exc):
            raise
        return False
    return True


async def aensure_group(client: aredis.Redis, group: str) -> bool:
    """Async twin of :func:`ensure_group`."""
    try:
        await client.xgroup_create(keys().events, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if not _is_busygroup(exc):
            raise
        return False
    return True


def read_group(
    client: redis.Redis,
    group: str,
    consumer: str,
    *,
    count: int,
    after: str | None = None,
    block_ms: int | None = None,
) -> list[GroupEntry]:
    """Entries for ``consumer``: new ones (``after`` None, waiting up to ``block_ms``), or its
    own pending entries with ids greater than ``after`` (``"0"``: all of them).

    A missing group (Redis lost its data) is created again and the read returns nothing.
    """
    args, kwargs = _plan_read(group, consumer, count, after, block_ms)
    try:
        raw = client.xreadgroup(*args, **kwargs)
    except redis.ResponseError as exc:
        if not _is_nogroup(exc):
            raise
        ensure_group(client, group)
        return []
    return _parse_read(raw)


async def aread_group(
    client: aredis.Redis,
    group: str,
    consumer: str,
    *,
    count: int,
    after: str | None = None,
    block_ms: int | None = None,
) -> list[GroupEntry]:
    """Async twin of :func:`read_group`."""
    args, kwargs = _plan_read(group, consumer, count, after, block_ms)
    try:
        async with bounded((block_ms or 0) / 1000):
            raw = await client.xreadgroup(*args, **kwargs)
    except redis.ResponseError as exc:
        if not _is_nogroup(exc):
            raise
        await aensure_group(client, group)
        return []
    return _parse_read(raw)


def claim_group(
    client: redis.Redis, group: str, consumer: str, *, min_idle_ms: int, count: int
) -> tuple[int, int]:
    """Take over entries other consumers read but left unacknowledged for ``min_idle_ms``.

    Returns (claimed, trimmed): claimed entries are now ``consumer``'s pending entries;
    trimmed ones were dropped by Redis >= 7 itself (6.2 hands them over, fields gone).
    """
    start, claimed, trimmed = "0-0", 0, 0
    for _ in range(CLAIM_ROUNDS):
        try:
            raw = client.execute_command(*_plan_claim(group, consumer, min_idle_ms, start, count))
        except redis.ResponseError as exc:
            if not _is_nogroup(exc):
                raise
            ensure_group(client, group)
            break
        start, n, gone = _parse_claim(raw)
        claimed, trimmed = claimed + n, trimmed + gone
        if start == "0-0":
            break
    return claimed, trimmed


async def aclaim_group(
    client: aredis.Redis, group: str, consumer: str, *, min_idle_ms: int, count: int
) -> tuple[int, int]:
    """Async twin of :func:`claim_group`."""
    start, claimed, trimmed = "0-0", 0, 0
    for _ in range(CLAIM_ROUNDS):
        try:
            raw = await client.execute_command(
                *_plan_claim(group, consumer, min_idle_ms, start, count)
            )
        except redis.ResponseError as exc:
            if not _is_nogroup(exc):
                raise
            await aensure_group(client, group)
            break
        start, n, gone = _parse_claim(raw)
        claimed, trimmed = claimed + n, trimmed + gone
        if start == "0-0":
            break
    return claimed, trimmed


def ack_group(client: redis.Redis, group: str, ids: Sequence[str]) -> int:
    """Acknowledge entries whose work is done; returns how many were pending."""
    if not ids:
        return 0
    acked: Any = client.xack(keys().events, group, *ids)
    return int(acked)


async def aack_group(client: aredis.Redis, group: str, ids: Sequence[str]) -> int:
    """Async twin of :func:`ack_group`."""
    if not ids:
        return 0
    return int(await client.xack(keys().events, group, *ids))


def _first_not_in(pending: Iterable[Mapping[str, Any]], skip: set[str]) -> str | None:
    for entry in pending:
        if str(entry["message_id"]) not in skip:
            return str(entry["message_id"])
    return None


def oldest_pending(client: redis.Redis, group: str, *, skip: set[str]) -> str | None:
    """The smallest id pending in ``group`` (any consumer) that is not in ``skip``.

    One XPENDING of ``len(skip) + 1`` entries: at most ``len(skip)`` of the smallest ids are
    in ``skip``, so the answer is among them if there is one.
    """
    raw: Any = client.xpending_range(keys().events, group, min="-", max="+", count=len(skip) + 1)
    return _first_not_in(raw, skip)


async def aoldest_pending(client: aredis.Redis, group: str, *, skip: set[str]) -> str | None:
    """Async twin of :func:`oldest_pending`."""
    raw = await client.xpending_range(keys().events, group, min="-", max="+", count=len(skip) + 1)
    return _first_not_in(raw, skip)


def group_backlog(client: redis.Redis, group: str) -> dict[str, int]:
    """What ``group`` has not done yet: ``pending`` (read, not acknowledged) and
    ``undelivered`` (appended after the group's last delivered id; bounded by one XRANGE
    page, so at most ``BACKLOG_PAGE``). Zeros when the group does not exist."""
    k = keys()
    try:
        summary: Any = client.xpending(k.events, group)
        groups: Any = client.xinfo_groups(k.events)
    except redis.ResponseError:
        return {"pending": 0, "undelivered": 0}
    last = next((str(g["last-delivered-id"]) for g in groups if g["name"] == group), "0-0")
    undelivered: Any = client.xrange(k.events, f"({last}", "+", count=BACKLOG_PAGE)
    return {"pending": int(summary["pending"]), "undelivered": len(undelivered)}


def prune_consumers(client: redis.Redis, group: str, *, idle_ms: int, keep: str = "") -> int:
    """Forget ``group``'s consumers (e.g. of web processes long gone) that hold nothing and
    were idle for ``idle_ms``; a live one that was removed reappears at its next read."""
    k = keys()
    try:
        consumers: Any = client.xinfo_consumers(k.events, group)
    except redis.ResponseError:
        return 0
    removed = 0
    for c in consumers:
        if c["name"] != keep and int(c["pending"]) == 0 and int(c["idle"]) >= idle_ms:
            client.xgroup_delconsumer(k.events, group, c["name"])
            removed += 1
    return removed


def groups_backlog(client: redis.Redis) -> dict[str, dict[str, int]]:
    """Every group's ``pending`` (read, not acknowledged) and ``unread`` (appended after its
    last delivered entry) entries: one XINFO GROUPS, cheap enough for the dashboard and every
    scrape. Redis >= 7 counts ``unread`` itself (its ``lag``); before that, or when it cannot
    tell, one XRANGE page of at most ``UNREAD_PAGE`` is counted. Empty: no log yet."""
    k = keys()
    try:
        raw: Any = client.xinfo_groups(k.events)
    except redis.ResponseError:
        return {}
    out: dict[str, dict[str, int]] = {}
    counting: list[str] = []
    pipe = client.pipeline(transaction=False)
    for g in raw:
        name, lag = str(g["name"]), g.get("lag")
        out[name] = {"pending": int(g["pending"]), "unread": int(lag or 0)}
        if lag is None:
            counting.append(name)
            pipe.xrange(k.events, f"({g['last-delivered-id']}", "+", count=UNREAD_PAGE)
    if counting:
        for name, page in zip(counting, pipe.execute(), strict=True):
            out[name]["unread"] = len(page)
    return out
