"""Consumer groups over the event log, one group per shard stream (``Keys(shard).events``):
create, read, claim, ack, backlog, prune.

Every background reader of the log is a consumer group: the connection-session writers
(``sessions``), the Django-signal sender (``hooks``) and the webhook router (``webhooks``).
Each acknowledges an entry only once its work is done, so what a killed reader took is read
again. Group names are not keys: they live inside each shard's stream, in its slot; a group
``hooks`` is one group per shard stream, all of the same name.

Entries are named ``<shard>/<stream id>`` (:class:`GroupEntry`): stream ids of two shards may
be equal, these names are not, and :func:`ack_group` finds each entry's stream from it. A
user's entries are all on the user's shard, so per-user order (an open before its close) is
the order of one stream, which a reader of that shard keeps.

A reader names the shards it reads (``shards``): long-running readers take one node's shards
each (``follow_groups``), and on one node one ``XREADGROUP`` names every stream of those
shards. On a Cluster every shard is its own slot, so reads and claims become one command per
shard in one pipeline (one round trip per node), never blocking: the caller waits between
empty reads. Functions without ``shards`` cover every shard.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import redis

from presence.store import topology
from presence.store.clients import bounded
from presence.store.keys import Keys
from presence.store.log import cluster_round
from presence.store.shards import all_shards

# The groups over the event log, and who reads each (docs/architecture.md).
SESSION_LOG_GROUP = "sessions"  # connection-session rows (presence.jobs.sessionlog)
HOOKS_GROUP = "hooks"  # Django signals (presence.hooks.dispatch)
WEBHOOKS_GROUP = "webhooks"  # the webhook outbox (presence.hooks.webhooks)
GROUPS = (SESSION_LOG_GROUP, HOOKS_GROUP, WEBHOOKS_GROUP)

# XAUTOCLAIM rounds per claim call and shard: bounds the work one call does for one dead
# consumer.
CLAIM_ROUNDS = 10

# A reader's own pending entries are re-read from, per shard, the stream id after which to
# read ("0": from the start).
Cursor = dict[int, str]


@dataclass(frozen=True)
class GroupEntry:
    """One event-log entry as a reader got it; ``fields`` is empty when it was trimmed away.

    ``id`` is ``<shard>/<stream id>`` (a bare stream id is shard 0's)."""

    id: str
    fields: dict[str, str]

    @property
    def shard(self) -> int:
        return split_id(self.id)[0]

    @property
    def stream_id(self) -> str:
        return split_id(self.id)[1]


def entry_id(shard: int, stream_id: str) -> str:
    """The name of entry ``stream_id`` of ``shard``'s stream."""
    return f"{shard}/{stream_id}"


def split_id(name: str) -> tuple[int, str]:
    """(shard, stream id) of an entry's name (a bare stream id is shard 0's)."""
    shard, sep, stream_id = name.partition("/")
    return (int(shard), stream_id) if sep else (0, name)


def stream_id_order(name: str) -> tuple[int, int]:
    """Sort key of a stream id (``<ms>-<seq>``, or an entry's name): ids do not sort as
    strings. Only entries of one shard are ordered by it; across shards it is time order."""
    ms, _, seq = split_id(name)[1].partition("-")
    return int(ms), int(seq or 0)


def start_cursor(shards: Iterable[int]) -> Cursor:
    """A scan of a reader's own pending entries from the start of each shard's stream."""
    return {shard: "0" for shard in shards}


def advance_cursor(cursor: Cursor, entries: Sequence[GroupEntry]) -> Cursor | None:
    """The cursor after ``entries`` (a read at ``cursor``): shards that returned nothing are
    done; None when every shard is."""
    last: Cursor = {}
    for entry in entries:
        last[entry.shard] = entry.stream_id
    return {shard: last[shard] for shard in cursor if shard in last} or None


def group_parts() -> list[list[int]]:
    """Every shard, split per node: what one long-running reader each follows."""
    return node_parts(None)


def _is_busygroup(exc: BaseException) -> bool:
    return str(exc).startswith("BUSYGROUP")


def _is_nogroup(exc: BaseException) -> bool:
    return str(exc).startswith("NOGROUP")


def node_parts(shards: Iterable[int] | None) -> list[list[int]]:
    """``shards`` (all when None) split per node."""
    return topology.split_by_node(sorted(all_shards() if shards is None else set(shards)))


def _polled() -> bool:
    return topology.shape() == "cluster"


def _streams(shards: Iterable[int]) -> dict[str, int]:
    return {Keys(shard).events: shard for shard in shards}


def _parse_read(raw: Any, streams: Mapping[str, int]) -> list[GroupEntry]:
    return [
        GroupEntry(entry_id(streams[stream], str(eid)), dict(fields or {}))
        for stream, entries in raw or []
        for eid, fields in entries
    ]


def _read_plan(
    shards: list[int], count: int, after: Cursor | None, block_ms: int | None
) -> Iterator[tuple[dict[Any, Any], dict[str, Any], dict[str, int]]]:
    """(streams -> ids, options) of each XREADGROUP: one for all ``shards`` (one node), or
    one per shard on a Cluster. ``>``: entries never delivered to the group; an id: this
    consumer's own pending entries after it. Only new entries are worth waiting for."""
    ids = {s: after[s] for s in shards if s in after} if after is not None else None
    wanted = list(ids) if ids is not None else shards
    options = {"count": count, "block": block_ms if after is None and not _polled() else None}
    chunks = [[s] for s in wanted] if _polled() else ([wanted] if wanted else [])
    for chunk in chunks:
        streams = _streams(chunk)
        yield (
            {k: (ids[s] if ids is not None else ">") for k, s in streams.items()},
            options,
            streams,
        )


# ----------------------------------------------------------------------------- create
def ensure_group(group: str, shards: Iterable[int] | None = None) -> bool:
    """Create ``group`` on each shard's stream, reading from its start; False when it
    existed on every one."""
    created = False
    for part in node_parts(shards):
        pipe: Any = topology.client_for(part[0]).pipeline(transaction=False)
        for shard in part:
            pipe.xgroup_create(Keys(shard).events, group, id="0", mkstream=True)
        for reply in pipe.execute(raise_on_error=False):
            if isinstance(reply, Exception):
                if not _is_busygroup(reply):
                    raise reply
            else:
                created = True
    return created


async def aensure_group(group: str, shards: Iterable[int] | None = None) -> bool:
    """Async twin of :func:`ensure_group`."""
    created = False
    for part in node_parts(shards):
        pipe: Any = topology.aclient_for(part[0]).pipeline(transaction=False)
        for shard in part:
            pipe.xgroup_create(Keys(shard).events, group, id="0", mkstream=True)
        for reply in await pipe.execute(raise_on_error=False):
            if isinstance(reply, Exception):
                if not _is_busygroup(reply):
                    raise reply
            else:
                created = True
    return created


# ----------------------------------------------------------------------------- read
def read_group(
    group: str,
    consumer: str,
    *,
    count: int,
    shards: Iterable[int] | None = None,
    after: Cursor | None = None,
    block_ms: int | None = None,
) -> list[GroupEntry]:
    """Entries of ``shards`` for ``consumer``: new ones (``after`` None, waiting up to
    ``block_ms`` when the shards are on one node that is not a Cluster's), or its own
    pending entries after each shard's id in ``after``. At most ``count`` per stream.

    A missing group (Redis lost its data) is created again and the read returns nothing.
    """
    out: list[GroupEntry] = []
    for part in node_parts(shards):
        client = topology.client_for(part[0])
        plan = list(_read_plan(part, count, after, block_ms))
        if not plan:
            continue
        try:
            if len(plan) == 1:
                streams, options, _ = plan[0]
                raws = [client.xreadgroup(group, consumer, streams, **options)]
            else:
                pipe: Any = client.pipeline(transaction=False)
                for streams, options, _ in plan:
                    pipe.xreadgroup(group, consumer, streams, **options)
                raws = pipe.execute()
        except redis.ResponseError as exc:
            if not _is_nogroup(exc):
                raise
            ensure_group(group, part)
            continue
        for (_, _, shard_of), raw in zip(plan, raws, strict=True):
            out += _parse_read(raw, shard_of)
    return out


async def aread_group(
    group: str,
    consumer: str,
    *,
    count: int,
    shards: Iterable[int] | None = None,
    after: Cursor | None = None,
    block_ms: int | None = None,
) -> list[GroupEntry]:
    """Async twin of :func:`read_group` (on this loop's blocking clients)."""
    if _polled():
        return await _apoll_group(group, consumer, count, shards, after)
    out: list[GroupEntry] = []
    for part in node_parts(shards):
        client = topology.aclient_for(part[0], blocking=True)
        plan = list(_read_plan(part, count, after, block_ms))
        if not plan:
            continue
        try:
            if len(plan) == 1:
                streams, options, _ = plan[0]
                async with bounded((options["block"] or 0) / 1000):
                    raws = [await client.xreadgroup(group, consumer, streams, **options)]
            else:
                pipe: Any = client.pipeline(transaction=False)
                for streams, options, _ in plan:
                    pipe.xreadgroup(group, consumer, streams, **options)
                async with bounded():
                    raws = await pipe.execute()
        except redis.ResponseError as exc:
            if not _is_nogroup(exc):
                raise
            await aensure_group(group, part)
            continue
        for (_, _, shard_of), raw in zip(plan, raws, strict=True):
            out += _parse_read(raw, shard_of)
    return out


async def _apoll_group(
    group: str,
    consumer: str,
    count: int,
    shards: Iterable[int] | None,
    after: Cursor | None,
) -> list[GroupEntry]:
    """A Cluster's read of ``shards``: one XREADGROUP per shard, one round trip per primary
    (presence/store/log.py, ``cluster_round``: redis-py's cluster pipeline costs about five
    times the Python)."""
    wanted = sorted(all_shards() if shards is None else set(shards))
    if after is not None:
        wanted = [s for s in wanted if s in after]

    def queue(pipe: Any, shard: int) -> None:
        position = after[shard] if after is not None else ">"
        pipe.xreadgroup(group, consumer, {Keys(shard).events: position}, count=count)

    replies = await cluster_round(topology.aclient_for(0, blocking=True), wanted, queue)
    out: list[GroupEntry] = []
    missing = []
    for shard in wanted:
        reply = replies[shard]
        if isinstance(reply, BaseException):
            if not _is_nogroup(reply):
                raise reply
            missing.append(shard)
            continue
        out += _parse_read(reply, {Keys(shard).events: shard})
    if missing:
        await aensure_group(group, missing)
    return out


# ----------------------------------------------------------------------------- claim
def _claim_args(
    group: str, consumer: str, shard: int, min_idle_ms: int, start: str, count: int
) -> list[Any]:
    # Not JUSTID: redis-py drops the cursor of a JUSTID reply. Claimed entries join this
    # consumer's pending list, where the caller reads them (trimmed ones included, by id).
    return [
        "XAUTOCLAIM",
        Keys(shard).events,
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


def _absorb_claims(replies: dict[int, Any], starts: dict[int, str]) -> tuple[int, int, list[int]]:
    """Fold one round of per-shard XAUTOCLAIM replies into ``starts`` (the next start per
    shard; a shard is done at 0-0 or without its group): (claimed, trimmed, shards whose
    group is missing). Any other error is raised."""
    claimed = trimmed = 0
    missing: list[int] = []
    for shard, raw in replies.items():
        if isinstance(raw, BaseException):
            if not _is_nogroup(raw):
                raise raw
            missing.append(shard)
            del starts[shard]
            continue
        start, n, gone = _parse_claim(raw)
        claimed, trimmed = claimed + n, trimmed + gone
        if start == "0-0":
            del starts[shard]
        else:
            starts[shard] = start
    return claimed, trimmed, missing


def claim_group(
    group: str,
    consumer: str,
    *,
    min_idle_ms: int,
    count: int,
    shards: Iterable[int] | None = None,
) -> tuple[int, int]:
    """Take over entries other consumers read but left unacknowledged for ``min_idle_ms``.

    Returns (claimed, trimmed): claimed entries are now ``consumer``'s pending entries;
    trimmed ones were dropped by Redis >= 7 itself (6.2 hands them over, fields gone). Each
    round is one pipeline per node over the shards still claiming.
    """
    claimed = trimmed = 0
    for part in node_parts(shards):
        client = topology.client_for(part[0])
        starts = {shard: "0-0" for shard in part}
        for _ in range(CLAIM_ROUNDS):
            pipe: Any = client.pipeline(transaction=False)
            for shard, start in starts.items():
                pipe.execute_command(
                    *_claim_args(group, consumer, shard, min_idle_ms, start, count)
                )
            replies = pipe.execute(raise_on_error=False)
            missing = []
            for shard, raw in zip(list(starts), replies, strict=True):
                if isinstance(raw, Exception):
                    if not _is_nogroup(raw):
                        raise raw
                    missing.append(shard)
                    del starts[shard]
                    continue
                start, n, gone = _parse_claim(raw)
                claimed, trimmed = claimed + n, trimmed + gone
                if start == "0-0":
                    del starts[shard]
                else:
                    starts[shard] = start
            if missing:
                ensure_group(group, missing)
            if not starts:
                break
    return claimed, trimmed


async def aclaim_group(
    group: str,
    consumer: str,
    *,
    min_idle_ms: int,
    count: int,
    shards: Iterable[int] | None = None,
) -> tuple[int, int]:
    """Async twin of :func:`claim_group`."""
    claimed = trimmed = 0
    if _polled():  # a Cluster: one round trip per primary, straight (store.log.cluster_round)
        client = topology.aclient_for(0)
        starts = {shard: "0-0" for shard in sorted(all_shards() if shards is None else shards)}
        for _ in range(CLAIM_ROUNDS):
            current = dict(starts)

            def queue(pipe: Any, shard: int, current: dict[int, str] = current) -> None:
                pipe.execute_command(
                    *_claim_args(group, consumer, shard, min_idle_ms, current[shard], count)
                )

            replies = await cluster_round(client, list(current), queue)
            n, gone, missing = _absorb_claims({s: replies[s] for s in current}, starts)
            claimed, trimmed = claimed + n, trimmed + gone
            if missing:
                await aensure_group(group, missing)
            if not starts:
                break
        return claimed, trimmed
    for part in node_parts(shards):
        client = topology.aclient_for(part[0])
        starts = {shard: "0-0" for shard in part}
        for _ in range(CLAIM_ROUNDS):
            pipe: Any = client.pipeline(transaction=False)
            for shard, start in starts.items():
                pipe.execute_command(
                    *_claim_args(group, consumer, shard, min_idle_ms, start, count)
                )
            replies = await pipe.execute(raise_on_error=False)
            n, gone, missing = _absorb_claims(dict(zip(list(starts), replies, strict=True)), starts)
            claimed, trimmed = claimed + n, trimmed + gone
            if missing:
                await aensure_group(group, missing)
            if not starts:
                break
    return claimed, trimmed


# ----------------------------------------------------------------------------- ack
def _by_shard(ids: Iterable[str]) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for name in ids:
        shard, stream_id = split_id(name)
        out.setdefault(shard, []).append(stream_id)
    return out


def ack_group(group: str, ids: Sequence[str]) -> int:
    """Acknowledge entries (their names) whose work is done; returns how many were pending."""
    if not ids:
        return 0
    by_shard = _by_shard(ids)
    acked = 0
    for part in node_parts(by_shard):
        pipe: Any = topology.client_for(part[0]).pipeline(transaction=False)
        for shard in part:
            pipe.xack(Keys(shard).events, group, *by_shard[shard])
        acked += sum(int(n) for n in pipe.execute())
    return acked


async def aack_group(group: str, ids: Sequence[str]) -> int:
    """Async twin of :func:`ack_group`."""
    if not ids:
        return 0
    by_shard = _by_shard(ids)
    acked = 0
    for part in node_parts(by_shard):
        pipe: Any = topology.aclient_for(part[0]).pipeline(transaction=False)
        for shard in part:
            pipe.xack(Keys(shard).events, group, *by_shard[shard])
        acked += sum(int(n) for n in await pipe.execute())
    return acked


# ----------------------------------------------------------------------------- pending
def _first_not_in(pending: Iterable[Mapping[str, Any]], shard: int, skip: set[str]) -> str | None:
    for entry in pending:
        name = entry_id(shard, str(entry["message_id"]))
        if name not in skip:
            return name
    return None


def _pending_plan(skip: set[str], shards: Iterable[int]) -> dict[int, int]:
    # At most the skipped entries of a shard are among its smallest pending ids.
    per_shard = _by_shard(skip)
    return {shard: len(per_shard.get(shard, ())) + 1 for shard in shards}


def oldest_pending(group: str, *, skip: set[str], shards: Iterable[int]) -> dict[int, str]:
    """Per shard of ``shards``, the name of the smallest entry pending in ``group`` (any
    consumer) that is not in ``skip``; shards with none are left out. One XPENDING per
    shard of ``len(skip of that shard) + 1`` entries, one pipeline per node."""
    plan = _pending_plan(skip, shards)
    out: dict[int, str] = {}
    for part in node_parts(plan):
        pipe: Any = topology.client_for(part[0]).pipeline(transaction=False)
        for shard in part:
            pipe.xpending_range(Keys(shard).events, group, min="-", max="+", count=plan[shard])
        for shard, raw in zip(part, pipe.execute(), strict=True):
            if (first := _first_not_in(raw, shard, skip)) is not None:
                out[shard] = first
    return out


async def aoldest_pending(group: str, *, skip: set[str], shards: Iterable[int]) -> dict[int, str]:
    """Async twin of :func:`oldest_pending`."""
    plan = _pending_plan(skip, shards)
    out: dict[int, str] = {}
    for part in node_parts(plan):
        pipe: Any = topology.aclient_for(part[0]).pipeline(transaction=False)
        for shard in part:
            pipe.xpending_range(Keys(shard).events, group, min="-", max="+", count=plan[shard])
        for shard, raw in zip(part, await pipe.execute(), strict=True):
            if (first := _first_not_in(raw, shard, skip)) is not None:
                out[shard] = first
    return out
