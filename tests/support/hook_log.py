"""Appending presence events to the real event log in the tests of the hooks, in the format
connect.lua, room_join_*.lua, room_leave_*.lua, end.lua and status.lua write (the Lua tests pin
that format, ``o``/``v`` included)."""

from __future__ import annotations

from typing import Any

import redis

from presence import store

T0 = 1_790_000_000_000  # ms; an arbitrary fixed time


class Log:
    """Appends entries the way the Lua scripts do (``p`` chains them)."""

    def __init__(self, r: redis.Redis) -> None:
        # Shard 0's stream through the store's own client of it: the private Redis ``r`` on
        # one Redis, the node holding shard 0 on a Cluster or shard URLs (the readers follow
        # every shard's stream wherever it lives). ``r`` stays the callers' handle on the run.
        self.r: redis.Redis = store.client_for(0)
        self.key = store.keys(0).events
        self.t = T0

    def add(self, kind: str, **fields: Any) -> str:
        last = self.r.xrevrange(self.key, count=1)
        prev = last[0][0] if last else "0-0"  # type: ignore[index]
        self.t += 1
        entry = {"k": kind, "p": prev, "t": str(fields.pop("t", self.t))}
        entry.update({k: str(v) for k, v in fields.items()})
        # The entry's name as readers see it (``<shard>/<stream id>``: this log is shard 0's).
        return store.entry_id(0, str(self.r.xadd(self.key, entry)))  # type: ignore[arg-type]

    def join(self, uid: int, room: str = "", *, occupied: bool = False) -> str:
        extra = {"o": "1"} if occupied else {}
        return self.add("join", r=room, u=uid, n=f"user{uid}", s="online", **extra)

    def leave(self, uid: int, room: str = "", *, why: str = "closed", vacated: bool = False) -> str:
        extra = {"v": "1"} if vacated else {}
        return self.add("leave", r=room, u=uid, n=f"user{uid}", s="offline", why=why, **extra)

    def status(self, uid: int, status: str, room: str = "") -> str:
        return self.add("status", r=room, u=uid, n=f"user{uid}", s=status)

    def open_close(self, uid: int) -> None:
        """A connection's ``open`` and ``close``: no hook event."""
        self.add("open", c="c-1", u=uid, n=f"user{uid}", ch="ch", ip="", ua="")
        self.add("close", c="c-1", u=uid, why="closed", at=self.t, hb="")

    def pending(self, group: str) -> int:
        """Entries read by ``group`` and not acknowledged."""
        try:
            return int(self.r.xpending(self.key, group)["pending"])  # type: ignore[index]
        except redis.ResponseError:
            return 0
