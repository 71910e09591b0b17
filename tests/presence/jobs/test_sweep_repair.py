"""The sweep repairs what a process killed between the halves of a room join left behind.

A join writes its user half (the connection's rooms, on the user's shard) and then its room
half (the member, on the room's shard). A process killed after the room half and before its
connection is ever ended leaves a member no end will remove; once it has lapsed past the key
grace, the sweep run of the room's shard removes it and logs its leave, once.
"""

from __future__ import annotations

from presence import store
from presence.jobs import sweep
from presence.store.clients import grace_ms, log_maxlen
from presence.store.shards import room_shard


def _orphan_member(client, room: str, uid: int, cid: str, exp: int) -> None:
    """Play a join whose process died after the room half: only the room side exists."""
    shard = room_shard(room)
    k = store.keys(shard)
    store.script("room_join_room").run(
        client,
        [k.room(room), k.room_user(room, uid), k.rooms, k.events],
        # A key grace 10 minutes longer than the store's keeps the room's key while the member
        # has lapsed past the store's grace (in a room with other members the key lives on as
        # long as they do).
        [exp - 1, grace_ms() + 600_000, cid, uid, room, log_maxlen(), exp, "ghost", "online"],
    )


def _room_events(client, shard: int, room: str) -> list[tuple[str, str]]:
    raw = client.xrange(store.keys(shard).events, "-", "+")
    return [(f["k"], f["u"]) for _, f in raw if f.get("r") == room]


def test_a_lapsed_orphan_member_is_removed_and_its_leave_logged_once(settings) -> None:
    settings.PRESENCE_SHARDS = 8
    room = "lobby-repair"
    shard = room_shard(room)
    r = store.client_for(shard)  # the room shard's node, on every store shape
    lapsed = store.now_ms() - grace_ms() - 5_000
    _orphan_member(r, room, 4242, "dead-cid", lapsed)
    assert r.zcard(store.keys(shard).room(room)) == 1
    assert _room_events(r, shard, room) == [("join", "4242")]

    first = sweep.run_sweep()
    assert first.repaired == 1
    assert r.zcard(store.keys(shard).room(room)) == 0
    assert _room_events(r, shard, room) == [("join", "4242"), ("leave", "4242")]

    # Idempotent: a second run (or a racing one) logs nothing more.
    assert sweep.run_sweep().repaired == 0
    assert _room_events(r, shard, room) == [("join", "4242"), ("leave", "4242")]


def test_a_live_member_is_left_alone(settings) -> None:
    settings.PRESENCE_SHARDS = 8
    room = "lobby-live"
    shard = room_shard(room)
    r = store.client_for(shard)  # the room shard's node, on every store shape
    _orphan_member(r, room, 77, "live-cid", store.now_ms() + 60_000)

    assert sweep.run_sweep().repaired == 0
    assert r.zrange(store.keys(shard).room(room), 0, -1) == ["77"]
