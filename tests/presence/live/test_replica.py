"""The global replica's ``presence.sync`` text (presence/live/replica.py).

Each user's JSON object is kept in a slot (a leave leaves a hole, compacted later) and a reply
is one join of them, cached until the next change. These tests hold that text, across syncs
at any point, holes and compactions, to the text a replica that never cached builds from the
same entries, and to the membership the entries describe.
"""

from __future__ import annotations

import json

from hypothesis import given, settings
from hypothesis import strategies as st

from presence.live.replica import GlobalReplica
from presence.protocol.types import PresenceUser
from presence.store.log import Snapshot

KINDS = ("join", "leave", "status", "open", "close")


def replica(users: list[PresenceUser] | None = None) -> GlobalReplica:
    users = users or []
    snap = Snapshot(
        room=None, seq="1-0", count=len(users), users=users, complete=True, positions={0: "1-0"}
    )
    return GlobalReplica(snap)


def entry(
    n: int, kind: str, uid: int, status: str = "online"
) -> tuple[int, tuple[int, int], dict[str, str], str]:
    """Shard 0's ``n``-th entry after the snapshot (positions 2-n), as the reader numbers it."""
    fields = {"k": kind, "u": str(uid), "n": f"user{uid}", "s": status}
    return 0, (2, n), fields, f"2-{n}"


def apply_all(
    rep: GlobalReplica, entries: list[tuple[int, tuple[int, int], dict[str, str], str]]
) -> None:
    for shard, pos, fields, seq in entries:
        rep.apply(shard, pos, fields, seq)


def test_joins_after_a_sync_come_last_in_its_text() -> None:
    rep = replica([{"id": 7, "username": "user7", "status": "away", "connections": 2}])
    assert json.loads(rep.users_json()) == [
        {"id": 7, "username": "user7", "status": "away", "connections": 2}
    ]
    apply_all(rep, [entry(1, "join", 3), entry(2, "join", 9)])
    users = json.loads(rep.reply_text("s"))["data"]["users"]
    assert [u["id"] for u in users] == [7, 3, 9]
    assert users[1] == {"id": 3, "username": "user3", "status": "online", "connections": 1}


def test_a_join_into_an_empty_replica_after_a_sync() -> None:
    rep = replica()
    assert rep.users_json() == "[]"
    apply_all(rep, [entry(1, "join", 4)])
    assert json.loads(rep.users_json()) == [
        {"id": 4, "username": "user4", "status": "online", "connections": 1}
    ]


def test_a_change_to_a_listed_user_after_joins_is_in_the_next_text() -> None:
    rep = replica()
    rep.users_json()
    apply_all(rep, [entry(1, "join", 1), entry(2, "join", 2), entry(3, "status", 1, "away")])
    apply_all(rep, [entry(4, "open", 2)])
    assert json.loads(rep.users_json()) == [
        {"id": 1, "username": "user1", "status": "away", "connections": 1},
        {"id": 2, "username": "user2", "status": "online", "connections": 2},
    ]
    apply_all(rep, [entry(5, "leave", 1), entry(6, "join", 5)])
    assert [u["id"] for u in json.loads(rep.users_json())] == [2, 5]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(
                st.sampled_from(KINDS), st.integers(1, 6), st.sampled_from(("online", "away"))
            ),
            st.just(("sync", 0, "")),
        ),
        max_size=40,
    )
)
def test_the_cached_text_equals_a_rebuild_after_any_entries(
    steps: list[tuple[str, int, str]],
) -> None:
    """Syncs at any points between any entries: every reply equals a fresh replica's."""
    cached, n, applied = replica(), 0, []
    for kind, uid, status in steps:
        if kind == "sync":
            fresh = replica()
            apply_all(fresh, applied)
            assert cached.users_json() == fresh.users_json()
            json.loads(cached.reply_text(1))  # well-formed as a whole frame
            continue
        n += 1
        applied.append(entry(n, kind, uid, status))
        apply_all(cached, applied[-1:])
    fresh = replica()
    apply_all(fresh, applied)
    assert cached.users_json() == fresh.users_json()
    assert len(json.loads(cached.users_json())) == len(cached)


def test_many_leaves_compact_the_slots_and_keep_the_order() -> None:
    cached, applied = replica(), []
    cached.users_json()
    for uid in range(1, 301):
        applied.append(entry(len(applied) + 1, "join", uid))
    for uid in range(1, 301, 3):  # keep every third
        applied += [
            entry(len(applied) + 1, "leave", uid + 1),
            entry(len(applied) + 2, "leave", uid + 2),
        ]
    applied.append(entry(len(applied) + 1, "join", 2))  # back: last now
    applied.append(entry(len(applied) + 1, "open", 1))  # a second tab: in place
    for n, item in enumerate(applied):
        apply_all(cached, [item])
        if n % 50 == 0:
            cached.users_json()  # syncs between the changes
    fresh = replica()
    apply_all(fresh, applied)
    users = json.loads(cached.users_json())
    assert cached.users_json() == fresh.users_json()
    assert [u["id"] for u in users] == [*range(1, 301, 3), 2]
    assert users[0]["connections"] == 2
    assert cached.fragments(["1", "3", "2"]) == (
        [json.dumps(users[0], separators=(",", ":")), json.dumps(users[-1], separators=(",", ":"))],
        ["3"],
    )
