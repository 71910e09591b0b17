"""A process-local replica of who is online, kept by the event log reader.

``presence.sync`` for the global scope must hand the client everyone online at a log
position. Read from Redis that is O(users) commands per sync; in a connect storm, where
every new client syncs, O(users²) — tens of millions of commands for 5,000 clients. The
reader sees every event in log order anyway, so it keeps the global membership here and a
sync is answered from memory, at the reader's own position: exactly consistent with the
diffs the socket gets next, at no Redis cost.

The replica is built on the first global sync (one Redis snapshot at a position of every
shard's stream), then replays the reader's recent events after those positions that it has
already dispatched (kept in :attr:`EventLogReader.recent`), then follows every new event.
It keeps one position per shard (an entry at or before its shard's position is in it
already) and the reader's global position (``seq``, what a sync reply says). A gap in the
log drops it (the next sync rebuilds it).

Each user's wire form is kept as a JSON fragment, so a reply with thousands of users is
one string join, not thousands of dict serialisations.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, cast

from presence import store
from presence.conf import app_settings
from presence.live.diffs import Pos, position

# What the replica follows: membership of the global scope, and connection counts.
MEMBERSHIP = frozenset({"join", "leave", "status"})


class GlobalReplica:
    """uid -> (username, status, live connections) of everyone online, at ``pos``."""

    def __init__(self, snap: store.Snapshot) -> None:
        self.seq = snap.seq  # the reader's global position (presence/live/eventlog.py)
        self.pos: Pos = position(snap.seq)
        # shard -> position of its stream the replica holds everything up to
        self.positions: dict[int, Pos] = {s: position(p) for s, p in snap.positions.items()}
        self._users: dict[int, list[Any]] = {}  # uid -> [username, status, connections]
        # Each user's JSON object, kept in the dict's order: a user keeps their slot while
        # online, a leave leaves a hole (compacted once holes are half the list). A sync
        # after any change joins these strings again, one C-level join, instead of
        # serialising or looking up every user in Python: in a connect storm every socket
        # syncs and something changed since the last sync nearly every time (a join, or on
        # a reconnect a held user's new connection), so that work was O(users) per sync
        # in Python, O(n²) over the storm.
        self._parts: list[str | None] = []
        self._slots: dict[int, int] = {}
        self._cache: str | None = None
        for user in snap.users:
            self._users[user["id"]] = [user["username"], user["status"], user["connections"]]
            self._put(user["id"])

    def apply(self, shard: int, pos: Pos, fields: Mapping[str, str], seq: str) -> None:
        """Follow one entry of ``shard``'s stream at ``pos`` (in log order), which the reader
        numbered ``seq``; entries at or before the shard's position are in already."""
        held = self.positions.get(shard)
        if held is not None and pos <= held:
            return
        self.positions[shard] = pos
        self.seq, self.pos = seq, position(seq)
        kind = fields.get("k")
        uid = int(fields.get("u") or 0)
        entry = self._users.get(uid)
        if kind == "open":
            if entry is not None:
                entry[2] += 1
                self._put(uid)
        elif kind == "close":
            if entry is not None and entry[2] > 1:
                entry[2] -= 1
                self._put(uid)
        elif kind in MEMBERSHIP and fields.get("r", "") == "":
            if kind == "leave":
                if self._users.pop(uid, None) is not None:
                    self._drop(uid)
            elif entry is None:
                if kind != "join":
                    return  # a status of someone gone: the log's leave was first
                self._users[uid] = [fields.get("n", ""), fields.get("s", "online"), 1]
                self._put(uid)
            else:
                entry[0], entry[1] = fields.get("n", entry[0]), fields.get("s", entry[1])
                self._put(uid)

    def replay(self, events: Iterable[tuple[int, Pos, Mapping[str, str], str]]) -> None:
        """Apply already-dispatched entries (shard, position, fields, reader's seq); those
        the snapshot holds are skipped."""
        for shard, pos, fields, seq in events:
            self.apply(shard, pos, fields, seq)

    def _put(self, uid: int) -> None:
        """Write ``uid``'s JSON object into its slot (a new user's goes last)."""
        username, status, conns = self._users[uid]
        text = json.dumps(
            {"id": uid, "username": username, "status": status, "connections": conns},
            separators=(",", ":"),
        )
        slot = self._slots.get(uid)
        if slot is None:
            self._slots[uid] = len(self._parts)
            self._parts.append(text)
        else:
            self._parts[slot] = text
        self._cache = None

    def _drop(self, uid: int) -> None:
        slot = self._slots.pop(uid, None)
        if slot is None:
            return
        self._parts[slot] = None
        self._cache = None
        holes = len(self._parts) - len(self._slots)
        if holes > 64 and 2 * holes > len(self._parts):
            # The dict's order is the slots' order (a user who comes back is a new key and
            # gets a new, last slot), so compaction keeps the reply's order.
            parts = self._parts
            self._parts = [parts[self._slots[uid]] for uid in self._users]
            self._slots = {uid: i for i, uid in enumerate(self._users)}

    def users_json(self) -> str:
        """The ``users`` array as JSON text, in the replica's order (cached until a change)."""
        if self._cache is None:
            # Fragments are never empty: filter(None) drops exactly the holes, in C.
            self._cache = "[" + ",".join(filter(None, self._parts)) + "]"
        return self._cache

    def fragments(self, uids: Iterable[str]) -> tuple[list[str], list[str]]:
        """The JSON objects of those of ``uids`` online here, and the uids not in the replica."""
        known: list[str] = []
        missing: list[str] = []
        for uid in uids:
            slot = self._slots.get(int(uid))
            if slot is None:
                missing.append(uid)
            else:
                known.append(cast(str, self._parts[slot]))  # a slot in _slots is never a hole
        return known, missing

    def __len__(self) -> int:
        return len(self._users)

    def reply_text(self, frame_id: str | int | None) -> str:
        """The whole ``presence.sync`` reply frame for the global scope, as text."""
        return (
            '{"type":"reply","id":'
            + json.dumps(frame_id)
            + ',"data":{"count":'
            + str(len(self._users))
            + ',"users":'
            + self.users_json()
            + ',"seq":"'
            + self.seq
            + '","complete":true}}'
        )


# ---------------------------------------------------------------- room listings
# How long a room listing waits for the process's log reader to reach the listing's position
# before it reads the members' names from Redis instead (the reader is normally ms behind).
CATCH_UP_WAIT = 0.5


class ReplicaSource(Protocol):
    """The log reader, as far as a listing needs it (presence.live.eventlog.EventLogReader)."""

    replica: GlobalReplica | None

    def global_replica(self) -> Awaitable[GlobalReplica | None]: ...


@dataclass(frozen=True)
class Listing:
    """A room's members at log position ``seq``; ``users_json`` is their JSON array."""

    seq: str
    count: int
    users_json: str
    complete: bool


async def room_listing(source: ReplicaSource | None, room: str, *, limit: int) -> Listing:
    """The members of ``room`` (up to ``limit``) at one position of its shard's stream.

    WARNING: on the room.join path. The ids come from one MULTI of a fixed number of
    commands on the room's shard; the names, statuses and connection counts from this
    process's replica of everyone online, once the reader has applied the room's shard up to
    the ids' position (so the listing is consistent with the diffs after ``seq``, as the
    global sync is). So a join's Redis cost does not depend on the room's size. Members the
    replica does not hold (it could not be kept, or the reader lags too far) are read from
    Redis, two commands each, on their shards.
    """
    members = await store.members(room, limit=limit)
    replica = source.replica if source is not None else None
    if (
        source is not None
        and replica is None
        and await store.aonline_count() <= app_settings.SYNC_LIMIT
    ):
        replica = await source.global_replica()
    parts: list[str] = []
    missing = members.uids
    if replica is not None and await _caught_up(replica, members.shard, position(members.seq)):
        parts, missing = replica.fragments(members.uids)
    for user in await store.adetails(missing):
        parts.append(json.dumps(user, separators=(",", ":")))
    return Listing(
        members.seq,
        members.count,
        "[" + ",".join(parts) + "]",
        complete=len(members.uids) >= members.count,
    )


def _at(replica: GlobalReplica, shard: int) -> Pos:
    return replica.positions.get(shard, (0, 0))


async def _caught_up(replica: GlobalReplica, shard: int, pos: Pos) -> bool:
    """Wait (briefly) until the replica has applied ``shard``'s stream up to ``pos``."""
    if _at(replica, shard) >= pos:
        return True
    deadline = time.monotonic() + CATCH_UP_WAIT
    while _at(replica, shard) < pos:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.002)
    return True
