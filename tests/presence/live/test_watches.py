"""WatchIndex: frames held until the reply is out, then released after its log position."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from presence.live.diffs import Event, Pos, position
from presence.live.fanout import GLOBAL
from presence.live.watches import WatchIndex


class Socket:
    """A subscriber that keeps what it was sent."""

    protocol = 1

    def __init__(self) -> None:
        self.positions: dict[str, Pos] = {}
        self.pending: dict[str, list[tuple[str, Sequence[Event]]]] = {}
        self.sent: list[dict[str, Any]] = []

    def deliver(self, text: str) -> None:
        self.sent.append(json.loads(text))


def event(eid: str, kind: str, uid: int, room: str = GLOBAL, status: str = "online") -> Event:
    return Event(eid, position(eid), kind, room, uid, f"user{uid}", status)


def test_frames_wait_for_the_reply_and_older_ones_are_dropped() -> None:
    index, sock = WatchIndex(), Socket()
    index.start(sock, [7])

    index.dispatch(event("100-0", "join", 7))  # before the reply's position
    index.dispatch(event("200-0", "status", 7, status="away"))  # after it
    assert sock.sent == []  # held while the reply is being read
    index.ready(sock, "150-0")
    index.dispatch(event("120-0", "leave", 7))  # the reader lagging: already in the reply
    index.dispatch(event("300-0", "leave", 7))

    assert [(f["event"], f["user"]["status"]) for f in sock.sent] == [
        ("status", "away"),
        ("offline", "offline"),
    ]


def test_only_global_events_of_watched_users() -> None:
    index, sock = WatchIndex(), Socket()
    index.start(sock, [7])
    index.ready(sock, "0-0")

    index.dispatch(event("1-0", "join", 7, room="lobby"))
    index.dispatch(event("2-0", "join", 8))
    index.dispatch(event("3-0", "join", 7))

    assert [(f["event"], f["user"]["id"]) for f in sock.sent] == [("online", 7)]
    assert sock.sent[0]["user"]["last_active"] == 0  # the event's time, in seconds


def test_clear_and_replace() -> None:
    index, sock, other = WatchIndex(), Socket(), Socket()
    index.start(sock, [7, 8])
    index.ready(sock, "0-0")
    index.start(other, [7])
    index.ready(other, "0-0")

    index.start(sock, [8])  # replaces: 7 no longer watched by sock
    index.ready(sock, "0-0")
    index.dispatch(event("1-0", "join", 7))
    index.clear(other)
    index.dispatch(event("2-0", "leave", 7))

    assert sock.sent == []
    assert [f["event"] for f in other.sent] == ["online"]
    assert index.watched(sock) == frozenset({8})
    assert len(index) == 1
