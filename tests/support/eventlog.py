"""Reading the presence event log ({P}:events) in the Lua script tests.

Entries come back as their fields (decoded strings). ``logged`` leaves out ``p``, the id of
the entry before, so tests compare what an event says; the chain itself is checked in
test_lua_eventlog.py with ``log_entries``.
"""

from __future__ import annotations

import redis

from presence import store

Entry = dict[str, str]


def log_entries(r: redis.Redis, since: str | None = None) -> list[tuple[str, Entry]]:
    """(id, fields) of every entry after id ``since`` (all when None), oldest first."""
    start = f"({since}" if since is not None else "-"
    raw = r.xrange(store.keys().events, start, "+")
    return [(str(eid), dict(fields)) for eid, fields in raw]  # type: ignore[union-attr]


def logged(r: redis.Redis, since: str | None = None) -> list[Entry]:
    """The fields of every entry after id ``since`` (all when None), oldest first, less ``p``."""
    return [
        {name: value for name, value in fields.items() if name != "p"}
        for _, fields in log_entries(r, since)
    ]


def log_mark(r: redis.Redis) -> str:
    """The id of the newest entry ("0-0" when the log is empty): pass it as ``since``."""
    last = r.xrevrange(store.keys().events, "+", "-", count=1)
    return str(last[0][0]) if last else "0-0"  # type: ignore[index]


def log_len(r: redis.Redis) -> int:
    """How many entries the log holds (0 when it does not exist)."""
    return int(r.xlen(store.keys().events))  # type: ignore[arg-type]


def leave(
    room: str, uid: int, t: int, why: str, username: str = "", *, vacated: bool = False
) -> Entry:
    """The ``leave`` entry end.lua logs (status ``offline``); room "" is the global scope.
    ``vacated``: the room has no member left (``v`` = 1)."""
    entry = {
        "k": "leave",
        "t": str(t),
        "r": room,
        "u": str(uid),
        "n": username or f"user{uid}",
        "s": "offline",
        "why": why,
    }
    return {**entry, "v": "1"} if vacated else entry


def close(cid: str, uid: int, t: int, why: str, at: int, hb: int) -> Entry:
    """The ``close`` entry end.lua logs for a connection it ended."""
    return {
        "k": "close",
        "t": str(t),
        "c": cid,
        "u": str(uid),
        "why": why,
        "at": str(at),
        "hb": str(hb),
    }


def join(
    room: str,
    uid: int,
    t: int,
    status: str = "online",
    username: str = "",
    *,
    occupied: bool = False,
    relisted: bool = False,
) -> Entry:
    """The ``join`` entry connect.lua (room "") and room_join_*.lua log. ``occupied``: the room
    had no member before (``o`` = 1); ``relisted``: the user's lapsed entry, never logged
    leaving, was still listed (``x`` = 1)."""
    entry = {
        "k": "join",
        "t": str(t),
        "r": room,
        "u": str(uid),
        "n": username or f"user{uid}",
        "s": status,
    }
    if relisted:
        entry["x"] = "1"
    return {**entry, "o": "1"} if occupied else entry
