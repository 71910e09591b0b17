"""The event log reader: one per web process (event loop), delivering to its own sockets.

Every script that changes presence appends its events to its shard's stream
(``Keys(shard).events``) in the same call (presence/store/lua/lib/eventlog.lua), so a change
and its event cannot be separated. Each process runs **one** :class:`EventLogReader`, which
follows every shard: one task per node of the presence store (presence/store/log.py: one
``XREAD BLOCK`` over the node's streams; on a Cluster one pipelined poll of every shard),
and hands each event to the sockets of this process that are in its scope, found in the
local index (presence/live/fanout.py). Redis work per event is therefore one read per
process, independent of the room's size and of the number of connections; messages to one
connection (kick, expiry) do not go through the log but straight to its channel.

- protocol v1 sockets get one ``presence`` frame per event, built once per event;
- protocol v2 sockets get batched ``presence.diff`` frames (presence/live/diffs.py);
- ``frame`` entries (``HandlerContext.broadcast``) go to every socket in the room as they are.

Positions (protocol v2). A room's events are all on the room's shard: its positions are that
stream's ids, as before shards. The global scope gathers every shard's user events; its
positions are this reader's own: each entry it delivers, in the order it delivers them, is
numbered ``<ms>-<n>`` (``ms`` the newest entry time seen, ``n`` counting within it), so they
compare like stream ids and a v2 client keeps comparing pairs (docs/protocol.md). The
numbering belongs to the process, as positions always belonged to the connection.

Gaps. Each entry names the entry before it in its shard's stream (``p``). When that is not
the id the reader delivered last for that shard (the stream was trimmed past the reader,
Redis restarted empty) or the reader lost a node, events may have been missed: the reader
takes a snapshot of every scope its v2 sockets follow, at a position of every shard, pushes
it to them as ``presence.state``, and continues from those positions. v1 has no way to say
"start over"; its sockets miss what happened meanwhile (docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from redis.exceptions import RedisError

from presence import store
from presence.conf import app_settings
from presence.live import gctune
from presence.live.diffs import DiffBatcher, Event, Pos, Subscriber, dumps, position
from presence.live.endings import get_end_queue
from presence.live.fanout import GLOBAL, LocalIndex
from presence.live.replica import GlobalReplica
from presence.live.watches import WatchIndex
from presence.loops import LoopLocal
from presence.obs import metrics

logger = logging.getLogger(__name__)

# WARNING: bounds one read. Under a connect storm thousands of entries arrive per second;
# 1,000 per read keeps each delivery pass short enough for heartbeats to interleave.
READ_COUNT = 1000
# How long one XREAD waits for entries: a quiet process makes one Redis call per period.
READ_BLOCK_MS = 5000
# A Cluster reader polls (presence/store/log.py): at once while entries come, then waiting
# from POLL_IDLE_MIN doubling up to POLL_IDLE_MAX while the log is quiet (the latency a first
# event after a quiet spell may see; docs/performance.md has the idle CPU it buys).
POLL_IDLE_MIN = 0.01
POLL_IDLE_MAX = 0.5
# How long a global sync waits for the reader to deliver what its Redis snapshot holds: a
# Cluster reader polls (up to POLL_IDLE_MAX between reads), the others are ms behind.
SYNC_CATCH_UP = 2.0
RETRY_FIRST = 0.1
RETRY_MAX = 2.0
PRESENCE_KINDS = frozenset({"join", "leave", "status"})


def time_ms() -> int:
    """Wall-clock milliseconds (a resync's global position does not go before it)."""
    return int(time.time() * 1000)


def parse_event(eid: str, fields: Mapping[str, str]) -> Event:
    """An Event from a join/leave/status log entry."""
    return Event(
        id=eid,
        pos=position(eid),
        kind=fields["k"],
        room=fields.get("r", GLOBAL),
        uid=int(fields["u"]),
        username=fields.get("n", ""),
        status=fields.get("s", "online"),
    )


def v1_frame(ev: Event) -> dict[str, Any]:
    """The protocol v1 ``presence`` frame of an event (docs/protocol.md)."""
    return {
        "type": "presence",
        "event": ev.kind,
        "room": ev.room or None,
        "user": {"id": ev.uid, "username": ev.username},
        "status": ev.status,
    }


def state_frame(snap: store.Snapshot) -> dict[str, Any]:
    """``presence.state``: a scope's members, pushed to v2 sockets after a gap."""
    return {
        "type": "presence.state",
        "room": snap.room,
        "seq": snap.seq,
        "count": snap.count,
        "users": snap.users,
        "complete": snap.complete,
    }


def next_position(current: Pos, eid: str) -> Pos:
    """The global scope's position after ``current`` for an entry of id ``eid`` (any shard):
    strictly after ``current``, and at the entry's time when that is newer."""
    ms = position(eid)[0]
    return (ms, 0) if ms > current[0] else (current[0], current[1] + 1)


def seq_of(pos: Pos) -> str:
    """A position's wire form, ``<ms>-<n>``."""
    return f"{pos[0]}-{pos[1]}"


class EventLogReader:
    """This event loop's reader of every shard's log, its local index and its diff batcher."""

    def __init__(self) -> None:
        self.v1: LocalIndex[Subscriber] = LocalIndex()
        self.v2: LocalIndex[Subscriber] = LocalIndex()
        self.watches = WatchIndex()  # watch lists of both protocols (presence/live/watches.py)
        self.last: dict[int, str] = {}  # shard -> id of the last entry delivered from it
        self.pos: Pos = (0, 0)  # the global scope's position (this reader's numbering)
        self._origins: dict[int, str] = {}  # shard -> its position when the batcher reset
        self._origin_global = "0-0"
        self.batcher = DiffBatcher(self.v2, app_settings.DIFF_WINDOW, self.origin)
        self.ready: asyncio.Task[None] | None = None
        self.tasks: list[asyncio.Task[None]] = []  # one per node group (store.follow_groups)
        self.resyncs = 0  # gaps recovered from (tests, metrics)
        self.delivered = 0  # entries read and dispatched
        # The full collection after the last socket waits for the ends still being written.
        self.gc = gctune.ConnectionGrowthFreezer(busy=lambda: len(get_end_queue()) > 0)
        # Read once: deliver() runs per socket per frame, a settings lookup there shows up.
        self.outbox_max = app_settings.OUTBOX_MAX
        # The global membership, kept from the log for presence.sync (presence/live/replica.py).
        self.replica: GlobalReplica | None = None
        self._building: asyncio.Task[GlobalReplica | None] | None = None
        # Entries dispatched while a replica's snapshot is being read (None otherwise): the
        # replica replays those newer than its snapshot. (shard, shard position, fields, seq)
        self.recent: list[tuple[int, Pos, Mapping[str, str], str]] | None = None
        # Set while a resync runs: the node tasks wait for it before delivering more.
        self._resyncing: asyncio.Event | None = None
        # Shards where a node task saw a gap or lost its node: resync before reading on.
        self._gapped: set[int] = set()

    @property
    def seq(self) -> str:
        """The global scope's current position, as the wire writes it."""
        return seq_of(self.pos)

    def origin(self, scope: str) -> str:
        """The position a scope's first diff continues (``prev``) since the last reset."""
        if scope == GLOBAL:
            return self._origin_global
        return self._origins.get(store.room_home(scope), "0-0")

    def _reset_batcher(self) -> None:
        self._origins = dict(self.last)
        self._origin_global = self.seq
        self.batcher.reset(self.origin)

    # ----------------------------------------------------------------- subscribers
    def index(self, sub: Subscriber) -> LocalIndex[Subscriber]:
        """The index of ``sub``'s protocol."""
        return self.v2 if sub.protocol == 2 else self.v1

    def register(self, sub: Subscriber) -> None:
        """Track a new socket; with global events on it is in the global scope at once."""
        index = self.index(sub)
        index.register(sub)
        if app_settings.GLOBAL_EVENTS:
            index.join(sub, GLOBAL)
        self.gc.observe(len(self.v1) + len(self.v2), grew=True)

    def unregister(self, sub: Subscriber) -> None:
        """Forget a socket (it closed)."""
        self.index(sub).unregister(sub)
        self.watches.clear(sub)
        self.gc.observe(len(self.v1) + len(self.v2), grew=False)

    # ----------------------------------------------------------------- reading
    async def _start(self) -> None:
        self.last = await store.log_positions()
        newest = max((position(eid) for eid in self.last.values()), default=(0, 0))
        self.pos = (newest[0], 0)
        self._reset_batcher()
        loop = asyncio.get_running_loop()
        self.tasks = [
            loop.create_task(self._follow(client, shards), name=f"presence-log-{i}")
            for i, (client, shards) in enumerate(store.follow_groups())
        ]

    async def _follow(self, client: Any, shards: list[int]) -> None:
        """Follow ``shards`` (one node's, or every shard on a Cluster) until cancelled."""
        polled = store.log_polled()
        delay, lost, idle = RETRY_FIRST, False, 0.0
        while True:
            try:
                if self._gapped:
                    await self.resync()
                    lost, delay = False, RETRY_FIRST
                entries = await store.read_logs(
                    client,
                    {shard: self.last.get(shard, "0-0") for shard in shards},
                    count=READ_COUNT,
                    block_ms=READ_BLOCK_MS,
                )
            except (RedisError, OSError) as exc:
                if not lost:
                    logger.warning("event log reader: Redis unreachable, retrying: %s", exc)
                    metrics.store_unavailable("eventlog")
                lost = True
                self._gapped.update(shards)
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            if self._resyncing is not None:
                await self._resyncing.wait()  # what it covered is skipped below
            self.deliver_entries(entries)
            if polled:
                # WARNING: the idle cost of a Cluster reader. Read again at once while entries
                # come; when quiet, wait longer and longer, up to POLL_IDLE_MAX.
                idle = 0.0 if entries else min(max(idle * 2, POLL_IDLE_MIN), POLL_IDLE_MAX)
                if idle:
                    await asyncio.sleep(idle)

    def deliver_entries(self, entries: list[store.ShardEntry]) -> None:
        """Dispatch what a read returned, shard by shard in stream order; a gap stops its
        shard's entries and asks for a resync."""
        gapped: set[int] = set()
        for shard, eid, fields in entries:
            if shard in gapped:
                continue
            last = self.last.get(shard, "0-0")
            if position(eid) <= position(last):
                continue  # a resync's snapshot already covers it
            if fields.get("p") != last:
                logger.warning(
                    "event log gap on shard %d: expected an entry after %s, got %s after %s",
                    shard,
                    last,
                    eid,
                    fields.get("p"),
                )
                metrics.event_log_gap()
                gapped.add(shard)
                self._gapped.add(shard)  # resync before the next read; these are in it
                continue
            self.last[shard] = eid
            self.dispatch(eid, fields, shard=shard)

    def dispatch(self, eid: str, fields: Mapping[str, str], *, shard: int = 0) -> None:
        """Deliver one log entry of ``shard``'s stream to this process's sockets."""
        self.delivered += 1
        self.pos = next_position(self.pos, eid)
        kind = fields.get("k")
        if kind != "frame" and (self.replica is not None or self.recent is not None):
            spos = position(eid)
            if self.recent is not None:
                self.recent.append((shard, spos, fields, self.seq))
            if self.replica is not None:
                self.replica.apply(shard, spos, fields, self.seq)
        if kind == "frame":
            text, room = fields.get("f", ""), fields.get("r", GLOBAL)
            for index in (self.v1, self.v2):
                for sub in list(index.members(room)):
                    sub.deliver(text)
            return
        if kind not in PRESENCE_KINDS:
            return  # open/close: connection-level entries, for the session writer
        ev = parse_event(eid, fields)
        if ev.room == GLOBAL:
            # The global scope's diffs carry this reader's positions (module docstring).
            ev = replace(ev, id=self.seq, pos=self.pos)
        self.watches.dispatch(ev)
        members = self.v1.members(ev.room)
        if members:
            text = dumps(v1_frame(ev))
            for sub in list(members):
                sub.deliver(text)
        if self.v2.members(ev.room):
            self.batcher.add(ev)

    async def resync(self) -> None:
        """Recover from a gap: push fresh snapshots to v2 sockets, continue after them on
        every shard. One at a time; node tasks wait for it before delivering more."""
        if self._resyncing is not None:
            await self._resyncing.wait()
            return
        self._resyncing = asyncio.Event()
        gapped, self._gapped = self._gapped, set()
        try:
            await self._resync(gapped)
        except BaseException:
            self._gapped |= gapped  # the next read tries again
            raise
        finally:
            self._resyncing.set()
            self._resyncing = None

    async def _resync(self, gapped: set[int]) -> None:
        # Shards a snapshot covers continue from its position; gapped shards no snapshot
        # covers (no v2 socket follows a scope there) from their newest entry; the others
        # where they were (their v1 sockets and watchers miss nothing).
        scopes = self.v2.scopes()
        snaps = await store.snapshots([s or None for s in scopes], limit=app_settings.SYNC_LIMIT)
        moved: dict[int, str] = {}
        for snap in snaps:
            moved.update(snap.positions)
        rest = gapped - moved.keys()
        if rest:
            moved.update(await store.log_positions(rest))
        if any(position(eid) < position(self.last.get(s, "0-0")) for s, eid in moved.items()):
            # A stream is behind what this reader delivered: a failover or a restart lost
            # entries (replication is asynchronous). Counted; the snapshots below replace them.
            logger.warning("event log went back on some shard: entries were lost")
            metrics.event_log_gap()
        self.last.update(moved)
        self.pos = next_position(self.pos, f"{time_ms()}-0")
        self._reset_batcher()
        for scope, snap in zip(scopes, snaps, strict=True):
            if scope == GLOBAL:
                snap.seq = self.seq
            text = dumps(state_frame(snap))
            pos = position(snap.seq)
            for sub in list(self.v2.members(scope)):
                if scope in sub.positions or scope in sub.pending:
                    sub.positions[scope] = pos
                    sub.deliver(text)
        self.replica = None  # rebuilt from a fresh snapshot by the next sync
        self.resyncs += 1
        logger.info("event log reader resynced %d scopes at %s", len(scopes), self.seq)

    # ----------------------------------------------------------------- the replica
    async def global_replica(self) -> GlobalReplica | None:
        """The replica of everyone online, built on first use; None when too large to keep."""
        if self.replica is None:
            if self._building is None or self._building.done():
                self._building = asyncio.get_running_loop().create_task(self._build_replica())
            return await asyncio.shield(self._building)
        return self.replica

    async def _reached(self, positions: Mapping[int, str], within: float) -> bool:
        """Wait (up to ``within`` s) until this reader has delivered every shard's stream up
        to its position in ``positions``; whether it did."""
        deadline = time.monotonic() + within
        while any(position(self.last.get(s, "0-0")) < position(p) for s, p in positions.items()):
            if time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.002)
        return True

    async def _build_replica(self) -> GlobalReplica | None:
        # Entries dispatched before this point are older than the snapshot read below (the
        # reader only delivers what the log already holds); those dispatched during the read
        # and the wait are kept, and the ones the snapshot does not contain (after its
        # position on their shard) are replayed. The reader may still be behind what the
        # snapshot holds (a Cluster reader polls): a client's own join, written by its
        # connect just before its sync, would come after the reply as a diff of a change the
        # snapshot already contains (docs/protocol.md promises it never does). So the
        # replica takes the reader's position only once the reader has delivered up to the
        # snapshot's position on every shard.
        self.recent = []
        try:
            (snap,) = await store.snapshots([None], limit=app_settings.SYNC_LIMIT)
            if not snap.complete:
                return None  # answered from Redis, incomplete, like any oversize listing
            if not await self._reached(snap.positions, SYNC_CATCH_UP):
                logger.warning("event log reader: behind a global snapshot past %ss", SYNC_CATCH_UP)
            snap.seq = self.seq
            replica = GlobalReplica(snap)
            replica.replay(self.recent)
            replica.seq, replica.pos = self.seq, self.pos
            self.replica = replica
            return replica
        finally:
            self.recent = None

    async def global_snapshot(self) -> store.Snapshot:
        """The global scope from Redis (the replica could not be kept), numbered at this
        reader's position once the reader has delivered exactly up to the snapshot's
        positions (then no later diff repeats what it holds, and none it lacks is missed).

        When the reader ran past them (an entry came meanwhile) it reads again, a few
        times; then, or when the reader does not catch up within SYNC_CATCH_UP (once: the
        sync's handler has a timeout), it falls back to the reader's position before the
        read: a change may then come once more as a diff, which applies harmlessly, but none
        is missed.
        """
        before, snap = self.seq, None
        for _ in range(3):
            before = self.seq  # everything delivered after it is newer than the read below
            (snap,) = await store.snapshots([None], limit=app_settings.SYNC_LIMIT)
            if not await self._reached(snap.positions, SYNC_CATCH_UP):
                break
            if all(
                position(self.last.get(s, "0-0")) == position(p) for s, p in snap.positions.items()
            ):
                snap.seq = self.seq
                return snap
        assert snap is not None
        snap.seq = before
        return snap


def _start_reader(loop: asyncio.AbstractEventLoop) -> EventLogReader:
    reader = EventLogReader()
    reader.ready = loop.create_task(reader._start())
    return reader


_readers: LoopLocal[EventLogReader] = LoopLocal(_start_reader)


async def ensure_reader() -> EventLogReader:
    """This event loop's reader, started on first use (one round trip, once per loop).

    The reader's position is read before the caller's first change is logged, so a socket
    that registers before changing presence also receives its own events.
    """
    reader = _readers.get()
    assert reader.ready is not None
    if not reader.ready.done():
        await asyncio.shield(reader.ready)
    elif reader.ready.exception() is not None:
        # The first start failed (Redis down): try again with this connection.
        _readers.discard()
        return await ensure_reader()
    return reader


def get_reader() -> EventLogReader | None:
    """This event loop's reader, if one was started."""
    return _readers.peek()
