"""Watch lists: which of this process's sockets watch which users, and their frames.

A socket sends ``presence.watch`` with user ids (presence/handlers/users.py); from then on
the event log reader (presence/live/eventlog.py) hands every global join, leave and status
event to :meth:`WatchIndex.dispatch`, which looks the user up here and sends one
``presence.watch`` frame, built once per event, to each local watcher. The Redis work per
event is the one log read every process makes anyway: delivery costs O(processes), never a
Redis write or read per watcher, and nothing is stored on the watched user's side.

Ordering with the reply. The reply is read together with a log position
(``store.awatch_snapshot``). Between the index update and that reply, a watcher's frames are
queued; once the reply is out they are released from that position on, and later frames
of entries at or before it (the reader may lag behind Redis) are dropped: the client sees
every change after its reply once, in order, and none from before it.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from presence.live.diffs import Event, Pos, Subscriber, dumps, position
from presence.live.fanout import GLOBAL, LocalIndex

WATCH_EVENTS = {"join": "online", "leave": "offline", "status": "status"}


def watch_frame(ev: Event) -> dict[str, Any]:
    """The ``presence.watch`` frame of a global event (docs/protocol.md).

    ``online`` carries ``last_active`` (a connect is activity), ``offline`` carries
    ``last_seen``, the event's time; fields a frame leaves out are unchanged.
    """
    at = ev.pos[0]
    user: dict[str, Any] = {"id": ev.uid, "username": ev.username}
    if ev.kind == "leave":
        seen = dt.datetime.fromtimestamp(at / 1000, tz=dt.UTC).isoformat()
        user.update(online=False, status="offline", last_seen=seen)
    elif ev.kind == "join":
        user.update(online=True, status=ev.status, last_seen=None, last_active=at // 1000)
    else:
        user.update(online=True, status=ev.status)
    return {"type": "presence.watch", "event": WATCH_EVENTS[ev.kind], "user": user}


class WatchIndex:
    """Watched user id -> this process's sockets watching them, and each one's position."""

    def __init__(self) -> None:
        self._index: LocalIndex[Subscriber] = LocalIndex()
        # Sockets whose reply is out -> the log position their frames continue after.
        self._from: dict[Subscriber, Pos] = {}
        # Sockets whose reply is not out yet -> their frames so far (position, text).
        self._queued: dict[Subscriber, list[tuple[Pos, str]]] = {}

    def start(self, sub: Subscriber, uids: list[int]) -> None:
        """Replace ``sub``'s watch list; its frames are held until :meth:`ready`."""
        self.clear(sub)
        if not uids:
            return
        self._index.register(sub)
        for uid in uids:
            self._index.join(sub, str(uid))
        self._queued[sub] = []

    def ready(self, sub: Subscriber, seq: str) -> None:
        """The reply (at log position ``seq``) is out: release the held frames after it."""
        queued = self._queued.pop(sub, None)
        if queued is None:
            return  # cleared (or replaced) meanwhile
        pos = position(seq)
        self._from[sub] = pos
        for at, text in queued:
            if at > pos:
                sub.deliver(text)

    def clear(self, sub: Subscriber) -> None:
        """Stop every watch of ``sub`` (an empty list, or the socket closed)."""
        self._index.unregister(sub)
        self._from.pop(sub, None)
        self._queued.pop(sub, None)

    def watched(self, sub: Subscriber) -> frozenset[int]:
        """The user ids ``sub`` watches."""
        return frozenset(int(uid) for uid in self._index.scopes_of(sub))

    def __len__(self) -> int:
        """Sockets watching somebody."""
        return len(self._index)

    def dispatch(self, ev: Event) -> None:
        """Send ``ev``'s frame to the sockets watching its user (global events only)."""
        if ev.room != GLOBAL:
            return
        watchers = self._index.members(str(ev.uid))
        if not watchers:
            return
        text = dumps(watch_frame(ev))
        for sub in list(watchers):
            start = self._from.get(sub)
            if start is not None:
                if ev.pos > start:
                    sub.deliver(text)
            else:
                held = self._queued.get(sub)
                if held is not None:
                    held.append((ev.pos, text))
