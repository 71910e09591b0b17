"""The event log reader: one per web process (event loop), delivering to its own sockets.

Every script that changes presence appends its events to the stream ``{P}:events`` in the
same call (presence/store/lua/lib/eventlog.lua), so a change and its event cannot be separated.
Each process runs **one** :class:`EventLogReader`: it ``XREAD BLOCK``s from the last id it
delivered and hands each event to the sockets of this process that are in its scope,
found in the local index (presence/live/fanout.py). Redis work per event is therefore one read
per process, independent of the room's size and of the number of connections; messages
to one connection (kick, expiry) do not go through the log but straight to its channel.

- protocol v1 sockets get one ``presence`` frame per event, built once per event;
- protocol v2 sockets get batched ``presence.diff`` frames (presence/live/diffs.py);
- ``frame`` entries (``HandlerContext.broadcast``) go to every socket in the room as they are.

Gaps. Each entry names the entry before it (``p``). When that is not the id the reader
delivered last (the log was trimmed past the reader, Redis restarted empty) or the reader
lost Redis, events may have been missed: the reader takes a snapshot of every scope its v2
sockets follow, in one MULTI with the log position, pushes it to them as
``presence.state``, and continues from that position. v1 has no way to say "start over";
its sockets miss what happened meanwhile (docs/protocol.md).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

from redis.exceptions import RedisError

from presence import store
from presence.conf import app_settings
from presence.live import gctune
from presence.live.diffs import DiffBatcher, Event, Pos, Subscriber, dumps, position
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
RETRY_FIRST = 0.1
RETRY_MAX = 2.0
PRESENCE_KINDS = frozenset({"join", "leave", "status"})


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


class EventLogReader:
    """This event loop's reader of the log, its local index and its diff batcher."""

    def __init__(self) -> None:
        self.v1: LocalIndex[Subscriber] = LocalIndex()
        self.v2: LocalIndex[Subscriber] = LocalIndex()
        self.watches = WatchIndex()  # watch lists of both protocols (presence/live/watches.py)
        self.last = "0-0"  # the id of the last entry delivered
        self.batcher = DiffBatcher(self.v2, app_settings.DIFF_WINDOW, self.last)
        self.ready: asyncio.Task[None] | None = None
        self.task: asyncio.Task[None] | None = None
        self.resyncs = 0  # gaps recovered from (tests, metrics)
        self.delivered = 0  # entries read and dispatched
        self.gc = gctune.ConnectionGrowthFreezer()
        # Read once: deliver() runs per socket per frame, a settings lookup there shows up.
        self.outbox_max = app_settings.OUTBOX_MAX
        # The global membership, kept from the log for presence.sync (presence/live/replica.py).
        self.replica: GlobalReplica | None = None
        self._building: asyncio.Task[GlobalReplica | None] | None = None
        # Entries dispatched while a replica's snapshot is being read (None otherwise): the
        # replica replays those newer than its snapshot.
        self.recent: list[tuple[str, Pos, Mapping[str, str]]] | None = None

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
        self.last = await store.log_position(store.get_async_redis())
        self.batcher.reset(self.last)
        self.task = asyncio.get_running_loop().create_task(self._run(), name="presence-log")

    async def _run(self) -> None:
        client = store.get_async_redis(blocking=True)
        delay, lost = RETRY_FIRST, False
        while True:
            try:
                if lost:
                    await self.resync(client)
                    lost, delay = False, RETRY_FIRST
                entries = await store.read_log(
                    client, self.last, count=READ_COUNT, block_ms=READ_BLOCK_MS
                )
            except (RedisError, OSError) as exc:
                if not lost:
                    logger.warning("event log reader: Redis unreachable, retrying: %s", exc)
                    metrics.store_unavailable("eventlog")
                lost = True
                await asyncio.sleep(delay)
                delay = min(delay * 2, RETRY_MAX)
                continue
            for eid, fields in entries:
                if fields.get("p") != self.last:
                    logger.warning(
                        "event log gap: expected an entry after %s, got %s after %s",
                        self.last,
                        eid,
                        fields.get("p"),
                    )
                    metrics.event_log_gap()
                    lost = True  # resync before the next read; these entries are in it
                    break
                self.last = eid
                self.dispatch(eid, fields)

    def dispatch(self, eid: str, fields: Mapping[str, str]) -> None:
        """Deliver one log entry to this process's sockets."""
        self.delivered += 1
        kind = fields.get("k")
        if kind != "frame" and (self.replica is not None or self.recent is not None):
            pos = position(eid)
            if self.recent is not None:
                self.recent.append((eid, pos, fields))
            if self.replica is not None:
                self.replica.apply(eid, pos, fields)
        if kind == "frame":
            text, room = fields.get("f", ""), fields.get("r", GLOBAL)
            for index in (self.v1, self.v2):
                for sub in list(index.members(room)):
                    sub.deliver(text)
            return
        if kind not in PRESENCE_KINDS:
            return  # open/close: connection-level entries, for the session writer
        ev = parse_event(eid, fields)
        self.watches.dispatch(ev)
        members = self.v1.members(ev.room)
        if members:
            text = dumps(v1_frame(ev))
            for sub in list(members):
                sub.deliver(text)
        if self.v2.members(ev.room):
            self.batcher.add(ev)

    async def resync(self, client: Any) -> None:
        """Recover from a gap: push fresh snapshots to v2 sockets, continue after them."""
        scopes = self.v2.scopes()
        snaps = await store.snapshots(
            client, [s or None for s in scopes], limit=app_settings.SYNC_LIMIT
        )
        seq = snaps[0].seq if snaps else await store.log_position(client)
        if position(seq) < position(self.last):
            # The log is behind what this reader delivered: a failover or a restart lost
            # entries (replication is asynchronous). Counted; the snapshots below replace them.
            logger.warning("event log went back from %s to %s: entries were lost", self.last, seq)
            metrics.event_log_gap()
        self.batcher.reset(seq)
        pos = position(seq)
        for scope, snap in zip(scopes, snaps, strict=True):
            text = dumps(state_frame(snap))
            for sub in list(self.v2.members(scope)):
                if scope in sub.positions or scope in sub.pending:
                    sub.positions[scope] = pos
                    sub.deliver(text)
        self.last = seq
        self.replica = None  # rebuilt from a fresh snapshot by the next sync
        self.resyncs += 1
        logger.info("event log reader resynced %d scopes at %s", len(scopes), seq)

    # ----------------------------------------------------------------- the replica
    async def global_replica(self) -> GlobalReplica | None:
        """The replica of everyone online, built on first use; None when too large to keep."""
        if self.replica is None:
            if self._building is None or self._building.done():
                self._building = asyncio.get_running_loop().create_task(self._build_replica())
            return await asyncio.shield(self._building)
        return self.replica

    async def _build_replica(self) -> GlobalReplica | None:
        # Entries dispatched before this point are older than the snapshot read below (the
        # reader only delivers what the log already holds); those dispatched during the read
        # are kept, and the ones the snapshot does not contain are replayed.
        self.recent = []
        try:
            (snap,) = await store.snapshots(
                store.get_async_redis(), [None], limit=app_settings.SYNC_LIMIT
            )
            if not snap.complete:
                return None  # answered from Redis, incomplete, like any oversize listing
            replica = GlobalReplica(snap)
            replica.replay(entry for entry in self.recent if entry[1] > replica.pos)
            self.replica = replica
            return replica
        finally:
            self.recent = None


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
