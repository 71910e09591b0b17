"""Consumer groups over the event log: create, read, claim, ack, backlog, prune."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aredis

from presence.store.clients import bounded
from presence.store.keys import keys

# --------------------------------------------------------------------------- session log
# ---- session log (presence.jobs.sessionlog)
# The connection-session writers read the event log ({P}:events) through one consumer group
# and acknowledge an entry only once its rows are committed. A group name is not a key.
SESSION_LOG_GROUP = "sessions"


@dataclass(frozen=True)
class SessionLogEntry:
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


def _plan_read_session_log(
    consumer: str,
    count: int,
    after: str | None,
    block_ms: int | None,
    group: str = SESSION_LOG_GROUP,
) -> tuple[list[Any], dict[str, Any]]:
    # ">": entries never delivered to the group; an id: this consumer's own pending entries
    # after it (trimmed ones come back with no fields). Only new entries are worth waiting for.
    streams = {keys().events: after if after is not None else ">"}
    return [group, consumer, streams], {
        "count": count,
        "block": block_ms if after is None else None,
    }


def _parse_read_session_log(raw: Any) -> list[SessionLogEntry]:
    return [
        SessionLogEntry(str(entry_id), dict(fields or {}))
        for _stream, entries in raw or []
        for entry_id, fields in entries
    ]


def _plan_claim_session_log(
    consumer: str, min_idle_ms: int, start: str, count: int, group: str = SESSION_LOG_GROUP
) -> list[Any]:
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


def _parse_claim_session_log(raw: Any) -> tuple[str, int, int]:
    """(next start, entries claimed, entries trimmed away); Redis >= 7 reports the latter."""
    deleted = raw[2] if len(raw) > 2 else []
    return str(raw[0]), len(raw[1]), len(deleted)


# XAUTOCLAIM rounds per claim call: bounds the work one call does for one dead consumer.
SESSION_LOG_CLAIM_ROUNDS = 10
# Undelivered entries counted by session_log_backlog (one XRANGE page).
SESSION_LOG_BACKLOG_PAGE = 10_000


def ensure_session_group(client: redis.Redis, *, group: str = SESSION_LOG_GROUP) -> bool:
    """Create the writers' group (or ``group``: the hooks' readers share these helpers),
    reading from the log's start; False when it existed."""
    try:
        client.xgroup_create(keys().events, group, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if not _is_busygroup(exc):
            raise
        return False
    return True


async def aensure_session_group(client: aredis.Redis) -> bool:
    """Async twin of :func:`ensure_session_group`."""
    try:
        await client.xgroup_create(keys().events, SESSION_LOG_GROUP, id="0", mkstream=True)
    except redis.ResponseError as exc:
        if not _is_busygroup(exc):
            raise
        return False
    return True


def read_session_log(
    client: redis.Redis,
    consumer: str,
    *,
    count: int,
    after: str | None = None,
    block_ms: int | None = None,
    group: str = SESSION_LOG_GROUP,
) -> list[SessionLogEntry]:
    """Entries for ``consumer``: new ones (``after`` None, waiting up to ``block_ms``), or its
    own pending entries with ids greater than ``after`` (``"0"``: all of them).

    A missing group (Redis lost its data) is created again and the read returns nothing.
    """
    args, kwargs = _plan_read_session_log(consumer, count, after, block_ms, group)
    try:
        raw = client.xreadgroup(*args, **kwargs)
    except redis.ResponseError as exc:
        if not _is_nogroup(exc):
            raise
        ensure_session_group(client, group=group)
        return []
    return _parse_read_session_log(raw)


async def aread_session_log(
    client: aredis.Redis,
    consumer: str,
    *,
    count: int,
    after: str | None = None,
    block_ms: int | None = None,
) -> list[SessionLogEntry]:
    """Async twin of :func:`read_session_log`."""
    args, kwargs = _plan_read_session_log(consumer, count, after, block_ms)
    try:
        async with bounded((block_ms or 0) / 1000):
            raw = await client.xreadgroup(*args, **kwargs)
    except redis.ResponseError as exc:
        if not _is_nogroup(exc):
            raise
        await aensure_session_group(client)
        return []
    return _parse_read_session_log(raw)


def claim_session_log(
    client: redis.Redis,
    consumer: str,
    *,
    min_idle_ms: int,
    count: int,
    group: str = SESSION_LOG_GROUP,
) -> tuple[int, int]:
    """Take over entries other consumers read but left unacknowledged for ``min_idle_ms``.

    Returns (claimed, trimmed): claimed entries are now ``consumer``'s pending entries;
    trimmed ones were dropped by Redis >= 7 itself (6.2 hands them over, fields gone).
    """
    start, claimed, trimmed = "0-0", 0, 0
    for _ in range(SESSION_LOG_CLAIM_ROUNDS):
        try:
            raw = client.execute_command(
                *_plan_claim_session_log(consumer, min_idle_ms, start, count, group)
            )
        except redis.ResponseError as exc:
            if not _is_nogroup(exc):
                raise
            ensure_session_group(client, group=group)
            break
        start, n, gone = _parse_claim_session_log(raw)
        claimed, trimmed = claimed + n, trimmed + gone
        if start == "0-0":
            break
    return claimed, trimmed


async def aclaim_session_log(
    client: aredis.Redis, consumer: str, *, min_idle_ms: int, count: int
) -> tuple[int, int]:
    """Async twin of :func:`claim_session_log`."""
    start, claimed, trimmed = "0-0", 0, 0
    for _ in range(SESSION_LOG_CLAIM_ROUNDS):
        try:
            raw = await client.execute_command(
                *_plan_claim_session_log(consumer, min_idle_ms, start, count)
            )
        except redis.ResponseError as exc:
            if not _is_nogroup(exc):
                raise
            await aensure_session_group(client)
            break
        start, n, gone = _parse_claim_session_log(raw)
        claimed, trimmed = claimed + n, trimmed + gone
        if start == "0-0":
            break
    return claimed, trimmed


def ack_session_log(
    client: redis.Redis, ids: Sequence[str], *, group: str = SESSION_LOG_GROUP
) -> int:
    """Acknowledge entries whose rows are committed; returns how many were pending."""
    if not ids:
        return 0
    acked: Any = client.xack(keys().events, group, *ids)
    return int(acked)


async def aack_session_log(client: aredis.Redis, ids: Sequence[str]) -> int:
    """Async twin of :func:`ack_session_log`."""
    if not ids:
        return 0
    return int(await client.xack(keys().events, SESSION_LOG_GROUP, *ids))


def _first_not_in(pending: Iterable[Mapping[str, Any]], skip: set[str]) -> str | None:
    for entry in pending:
        if str(entry["message_id"]) not in skip:
            return str(entry["message_id"])
    return None


def oldest_pending_session_log(client: redis.Redis, *, skip: set[str]) -> str | None:
    """The smallest id pending in the group (any consumer) that is not in ``skip``.

    One XPENDING of ``len(skip) + 1`` entries: at most ``len(skip)`` of the smallest ids are
    in ``skip``, so the answer is among them if there is one.
    """
    raw: Any = client.xpending_range(
        keys().events, SESSION_LOG_GROUP, min="-", max="+", count=len(skip) + 1
    )
    return _first_not_in(raw, skip)


async def aoldest_pending_session_log(client: aredis.Redis, *, skip: set[str]) -> str | None:
    """Async twin of :func:`oldest_pending_session_log`."""
    raw = await client.xpending_range(
        keys().events, SESSION_LOG_GROUP, min="-", max="+", count=len(skip) + 1
    )
    return _first_not_in(raw, skip)


def session_log_backlog(client: redis.Redis, *, group: str = SESSION_LOG_GROUP) -> dict[str, int]:
    """What the writers (or ``group``) have not done yet: ``pending`` (read, not
    acknowledged) and ``undelivered`` (appended after the group's last delivered id; bounded
    by one XRANGE page, so at most ``SESSION_LOG_BACKLOG_PAGE``). Zeros when the group does
    not exist."""
    k = keys()
    try:
        summary: Any = client.xpending(k.events, group)
        groups: Any = client.xinfo_groups(k.events)
    except redis.ResponseError:
        return {"pending": 0, "undelivered": 0}
    last = next((str(g["last-delivered-id"]) for g in groups if g["name"] == group), "0-0")
    undelivered: Any = client.xrange(k.events, f"({last}", "+", count=SESSION_LOG_BACKLOG_PAGE)
    return {"pending": int(summary["pending"]), "undelivered": len(undelivered)}


def prune_session_consumers(client: redis.Redis, *, idle_ms: int, keep: str = "") -> int:
    """Forget consumers (e.g. of web processes long gone) that hold nothing and were idle
    for ``idle_ms``; a live one that was removed reappears at its next read."""
    k = keys()
    try:
        consumers: Any = client.xinfo_consumers(k.events, SESSION_LOG_GROUP)
    except redis.ResponseError:
        return 0
    removed = 0
    for c in consumers:
        if c["name"] != keep and int(c["pending"]) == 0 and int(c["idle"]) >= idle_ms:
            client.xgroup_delconsumer(k.events, SESSION_LOG_GROUP, c["name"])
            removed += 1
    return removed
