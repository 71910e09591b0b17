"""Reading the presence event logs (one stream per shard, ``<shard tag>:events``) in tests.

Each shard's state changes append to that shard's stream (presence/store/keys.py), so a
user's connect and close lie on the user's shard and a room's join and leave on the room's.
``log_mark`` takes every shard's newest id; ``log_entries``/``logged`` read what every shard
appended after the mark, merged in stream-id order (entries of one shard keep their order;
entries of two shards written in the same millisecond are ordered by shard, so a test that
compares entries of two shards compares them as sets or per shard, never by position).
``logged_by_shard`` reads each shard's entries apart; ``by_home`` groups the entries a test
expects by the shard each belongs on, so one comparison checks where and in which order.

Entries come back as their fields (decoded strings). ``logged`` leaves out ``p``, the id of
the entry before, so tests compare what an event says; the chain itself is checked in
test_lua_eventlog.py with ``log_entries``.
"""

from __future__ import annotations

import redis

from presence import store

Entry = dict[str, str]
# Per shard, the id of its newest entry when the mark was taken.
Mark = dict[int, str]


def _id_key(eid: str) -> tuple[int, int]:
    ms, _, seq = eid.partition("-")
    return int(ms), int(seq or 0)


def shard_entries(r: redis.Redis, shard: int, since: str | None = None) -> list[tuple[str, Entry]]:
    """(id, fields) of every entry of ``shard``'s stream after id ``since``, oldest first."""
    start = f"({since}" if since is not None else "-"
    raw = r.xrange(store.keys(shard).events, start, "+")
    return [(str(eid), dict(fields)) for eid, fields in raw]  # type: ignore[union-attr]


def log_entries(r: redis.Redis, since: Mark | None = None) -> list[tuple[str, Entry]]:
    """(id, fields) of every entry of every shard after ``since`` (all when None), merged
    in id order (same id: by shard)."""
    found: list[tuple[tuple[int, int], int, str, Entry]] = []
    for shard in store.all_shards():
        after = since.get(shard) if since is not None else None
        for eid, fields in shard_entries(r, shard, after):
            found.append((_id_key(eid), shard, eid, fields))
    found.sort(key=lambda item: (item[0], item[1]))
    return [(eid, fields) for _, _, eid, fields in found]


def logged(r: redis.Redis, since: Mark | None = None) -> list[Entry]:
    """The fields of every entry after ``since`` (all when None), merged as ``log_entries``
    does, less ``p``."""
    return [
        {name: value for name, value in fields.items() if name != "p"}
        for _, fields in log_entries(r, since)
    ]


def log_mark(r: redis.Redis) -> Mark:
    """Every shard's newest entry id ("0-0" for an empty stream): pass it as ``since``."""
    pipe = r.pipeline(transaction=False)
    shards = list(store.all_shards())
    for shard in shards:
        pipe.xrevrange(store.keys(shard).events, "+", "-", count=1)
    return {
        shard: str(last[0][0]) if last else "0-0"
        for shard, last in zip(shards, pipe.execute(), strict=True)
    }


def log_len(r: redis.Redis, shard: int | None = None) -> int:
    """How many entries ``shard``'s stream holds, or all shards' together when None (0 for a
    stream that does not exist)."""
    shards = list(store.all_shards()) if shard is None else [shard]
    pipe = r.pipeline(transaction=False)
    for each in shards:
        pipe.xlen(store.keys(each).events)
    return sum(int(n) for n in pipe.execute())


def leave(
    room: str,
    uid: int,
    t: int,
    why: str,
    username: str = "",
    *,
    vacated: bool = False,
    at: int | None = None,
) -> Entry:
    """The ``leave`` entry end.lua logs (status ``offline``); room "" is the global scope.
    ``vacated``: the room has no member left (``v`` = 1). ``at``: when it happened, which
    end.lua's global leave carries (the lapse of a swept connection, else ``t``); a held
    leave released by release_held.lua has none."""
    entry = {
        "k": "leave",
        "t": str(t),
        "r": room,
        "u": str(uid),
        "n": username or f"user{uid}",
        "s": "offline",
        "why": why,
    }
    if at is not None:
        entry["at"] = str(at)
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


def home_of(entry: Entry) -> int:
    """The shard whose stream an entry belongs on: a room's (``r`` not "") on the room's
    home, a user's global one or a connection's (``open``, ``close``) on the user's."""
    room = entry.get("r", "")
    return store.room_home(room) if room else store.user_home(entry["u"])


def by_home(entries: list[Entry]) -> dict[int, list[Entry]]:
    """Expected entries grouped by :func:`home_of`, each group in the order given: compare
    with :func:`logged_by_shard` to check both where and in which order each is logged."""
    grouped: dict[int, list[Entry]] = {}
    for entry in entries:
        grouped.setdefault(home_of(entry), []).append(entry)
    return grouped


def logged_by_shard(r: redis.Redis, since: Mark | None = None) -> dict[int, list[Entry]]:
    """Each shard's entries after ``since`` (all when None), less ``p``, in its stream's
    order; shards that logged nothing are left out."""
    found: dict[int, list[Entry]] = {}
    for shard in store.all_shards():
        after = since.get(shard) if since is not None else None
        entries = [
            {name: value for name, value in fields.items() if name != "p"}
            for _, fields in shard_entries(r, shard, after)
        ]
        if entries:
            found[shard] = entries
    return found
