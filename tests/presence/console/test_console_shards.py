"""The operator console reads every shard (presence/store/console.py): with users on their
own shards (homes flipped, 64 shards), the online pages list everyone once with the exact
total, the status scan finds users on any shard, a connection is found on its user's shard,
and the recent events merge every shard's log newest first. On one Redis and on 3 primaries.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from pytest_django.fixtures import Settings

from presence import store
from presence.console import panels
from presence.store import shards
from presence.store.shards import room_shard, user_shard

pytestmark = pytest.mark.django_db

UIDS = list(range(1, 121))
BUSY = {7, 64, 99}


@pytest.fixture(autouse=True)
def flipped(settings: Settings) -> Iterator[None]:
    settings.PRESENCE_SHARDS = 64
    mp = pytest.MonkeyPatch()
    mp.setattr(shards, "user_home", user_shard)
    mp.setattr(shards, "room_home", room_shard)
    store.reset_clients()
    yield
    mp.undo()
    store.reset_clients()


@pytest.fixture(params=["one", "three"])
def shape(request: Any, settings: Settings) -> Iterator[str]:
    if request.param == "three":
        settings.PRESENCE_REDIS_SHARD_URLS = request.getfixturevalue("redis_shards")
        store.reset_clients()
    yield request.param
    store.reset_clients()


def seed() -> None:
    """UIDS online on their shards with one connection each, in room "lobby"."""
    now = store.now_ms()
    exp = now + 60_000
    for uid in UIDS:
        shard = user_shard(uid)
        k, cid = store.keys(shard), f"c{uid}"
        pipe = store.client_for(shard).pipeline(transaction=False)
        pipe.zadd(k.users, {str(uid): exp})
        status = "busy" if uid in BUSY else "online"
        pipe.hset(k.user(uid), mapping={"username": f"u{uid}", "status": status})
        pipe.zadd(k.user_conns(uid), {cid: exp})
        pipe.hset(k.conn(cid), mapping={"uid": uid, "channel": f"ch{uid}", "at": now})
        pipe.sadd(k.conn_rooms(cid), "lobby")
        pipe.zadd(k.active, {str(uid): now // 1000})
        pipe.execute()
        home = room_shard("lobby")
        store.client_for(home).zadd(store.keys(home).room("lobby"), {str(uid): exp})


def every_page(room: str | None) -> tuple[list[int], set[int]]:
    first = panels.get_online_page(room=room, page_size=25)
    ids = [row.uid for row in first.rows]
    totals = {first.total}
    for page in range(2, first.num_pages + 1):
        result = panels.get_online_page(room=room, page=page, page_size=25)
        ids += [row.uid for row in result.rows]
        totals.add(result.total)
    return ids, totals


def test_online_pages_cover_every_shard(shape: str) -> None:
    seed()
    for room in (None, "lobby"):
        ids, totals = every_page(room)
        assert sorted(ids) == UIDS, room
        assert totals == {len(UIDS)}


def test_rows_carry_details_from_the_users_shards(shape: str) -> None:
    seed()
    rows = panels.get_online_page(page_size=200).rows
    by_id = {row.uid: row for row in rows}
    assert by_id[64].username == "u64" and by_id[64].status == "busy"
    assert [c.cid for c in by_id[64].connections] == ["c64"]
    assert by_id[64].rooms == ["lobby"]


def test_the_status_scan_finds_users_on_any_shard(shape: str) -> None:
    seed()
    result = panels.get_online_page(status="busy", page_size=25)
    assert {row.uid for row in result.rows} == BUSY


def test_a_connection_is_found_on_its_users_shard(shape: str) -> None:
    seed()
    assert store.console_connection("c99") == (99, "ch99")
    assert store.console_connection("nobody") == (None, "")


def test_recent_events_merge_every_shard_newest_first(shape: str) -> None:
    entries = [(3, "1000-0"), (40, "1002-0"), (3, "1003-0"), (17, "1001-5")]
    for shard, eid in entries:
        store.client_for(shard).xadd(store.keys(shard).events, {"k": "open"}, id=eid)
    got = [eid for eid, _ in store.console_recent_events(3)]
    assert got == ["1003-0", "1002-0", "1001-5"]
