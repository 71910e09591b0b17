"""The diff batcher of protocol v2: a scope's events of a short window, one frame.

Protocol v1 sends one ``presence`` frame per event to every socket in the scope, so filling a
room of M users costs ~M²/2 frames. A ``presence.v2`` socket instead gets, per scope and per
``PRESENCE_DIFF_WINDOW`` (100 ms by default), one ``presence.diff``: the users who joined,
left or changed status in that window, each once, with their final state, and the log
position (``seq``) the frame brings the client to. The frame's JSON is built once and sent
to every socket whose position it continues.

The window widens with the fan-out: a flush sends one frame to every synced socket of each
scope, so at a fixed window the frames per second grow with the sockets (at 100 ms and 2,500
global v2 sockets, 25,000 frames/s: most of a connect storm's CPU, docs/performance.md). After
a flush of F frames the next window is at least ``F / FANOUT_FRAMES_PER_S`` seconds, up to
``MAX_WINDOW``: a process fans out at most about that many diff frames per second, however
many sockets it holds, and a change reaches every socket within ``MAX_WINDOW``. Fewer events
per frame is what the diff is for: the frames carry the same users, coalesced.

Positions are per socket and per scope (``Subscriber.positions``): a socket receives a
scope's diffs only once it has a snapshot of it (``presence.sync``, or the reply to
``room.join``), and never an event its snapshot already contains. While a snapshot is
being taken the frames for that scope are held back (``Subscriber.pending``) and
filtered against the snapshot's position once it is known (:func:`finish_sync`).
"""

from __future__ import annotations

import asyncio
import json
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from presence.live.fanout import GLOBAL, LocalIndex

Pos = tuple[int, int]

# WARNING: the fan-out's budget. Each diff frame costs the process ~30-40 us of CPU (a task,
# uvicorn's send, one transport write; measured in a storm, docs/performance.md), so 5,000
# frames/s is ~15-20 % of a core. Below it the window is PRESENCE_DIFF_WINDOW as configured.
FANOUT_FRAMES_PER_S = 5_000
# The longest a window is widened to: the most a change waits for its frame under load.
MAX_WINDOW = 1.0


@dataclass(slots=True, frozen=True)
class Event:
    """One presence entry of the event log, as readers see it."""

    id: str  # the stream id: the log position of this event
    pos: Pos  # ``id`` as a comparable pair
    kind: str  # join, leave or status (open/close/frame never reach the batcher)
    room: str  # the scope: a room, or GLOBAL
    uid: int
    username: str
    status: str


class Subscriber(Protocol):
    """What the fan-out needs of a socket (PresenceConsumer implements it)."""

    protocol: int
    positions: dict[str, Pos]
    pending: dict[str, list[tuple[str, Sequence[Event]]]]

    def deliver(self, text: str) -> None:
        """Queue one text frame for the socket (never blocks)."""


def dumps(frame: dict[str, Any]) -> str:
    """The wire form of a frame (compact JSON, as every frame the server sends)."""
    return json.dumps(frame, separators=(",", ":"))


def coalesce(events: Iterable[Event]) -> dict[str, list[dict[str, Any]]]:
    """Each user's final state over ``events`` (one scope, in log order).

    The last join or leave decides which list a user is in; a user with only status changes
    is in ``status``. A join carries the latest status, a leave ``offline``. Users appear in
    the order of their last event.
    """
    final: dict[int, tuple[str, Event]] = {}
    for ev in events:
        kind = ev.kind
        if kind == "status":
            before = final.get(ev.uid)
            if before is not None and before[0] != "status":
                kind = before[0]  # membership decided earlier in the window stays decided
        final.pop(ev.uid, None)  # re-insert: dicts keep insertion order
        final[ev.uid] = (kind, ev)
    out: dict[str, list[dict[str, Any]]] = {"join": [], "leave": [], "status": []}
    for kind, ev in final.values():
        status = "offline" if kind == "leave" else ev.status
        out[kind].append({"id": ev.uid, "username": ev.username, "status": status})
    return out


def diff_frame(scope: str, prev: str, events: Sequence[Event]) -> dict[str, Any]:
    """The ``presence.diff`` frame for ``events`` (non-empty, one scope, log order)."""
    return {
        "type": "presence.diff",
        "room": scope or None,
        "seq": events[-1].id,
        "prev": prev,
        **coalesce(events),
    }


def deliver_diff(
    sub: Subscriber,
    scope: str,
    prev: str,
    events: Sequence[Event],
    shared: _SharedFrame | None = None,
) -> bool:
    """Send ``sub`` what it has not seen of ``events``; whether a frame was sent.

    ``shared`` builds the frames of ``events`` (all of them, or a tail) once for every socket
    of the flush; without it the frame is built here.
    """
    held = sub.pending.get(scope)
    if held is not None:
        held.append((prev, events))  # a snapshot is being taken: decide once it is known
        return False
    pos = sub.positions.get(scope)
    if pos is None or events[-1].pos <= pos:
        return False  # no snapshot of this scope, or the snapshot already has all of it
    if events[0].pos <= pos:
        # The snapshot holds the window's first events: the rest, from where it stops.
        if shared is not None:
            text = shared.after(pos)
        else:
            text = dumps(diff_frame(scope, prev, [ev for ev in events if ev.pos > pos]))
    else:
        text = shared() if shared is not None else dumps(diff_frame(scope, prev, events))
    sub.positions[scope] = events[-1].pos
    sub.deliver(text)
    return True


def next_window(window: float, frames: int) -> float:
    """The window after a flush that sent ``frames``: ``window``, widened to keep the
    fan-out near ``FANOUT_FRAMES_PER_S`` (never past ``MAX_WINDOW``, unless ``window`` is)."""
    return max(window, min(MAX_WINDOW, frames / FANOUT_FRAMES_PER_S))


def start_sync(sub: Subscriber, scope: str) -> None:
    """Hold back ``scope``'s diffs for ``sub`` while its snapshot is taken."""
    sub.pending[scope] = []


def finish_sync(sub: Subscriber, scope: str, seq: str | None) -> None:
    """The snapshot is at ``seq`` and was sent: release what was held back after it.

    ``seq`` None (the snapshot failed) drops the held frames and leaves the scope unsynced.
    """
    held = sub.pending.pop(scope, [])
    if seq is None:
        return
    pos = position(seq)
    current = sub.positions.get(scope)
    sub.positions[scope] = max(pos, current) if current is not None else pos
    for prev, events in held:
        deliver_diff(sub, scope, prev, events)


def position(seq: str) -> Pos:
    """A log position ("<ms>-<n>") as a comparable pair."""
    ms, _, n = seq.partition("-")
    return int(ms), int(n or 0)


class _SharedFrame:
    """The text of one scope's diff, built on first use and then sent to every socket; and
    the texts of its tails, each built once for the sockets whose snapshot ends there.

    WARNING: the fan-out of a connect storm. A socket synced during the window has a
    snapshot that holds the window's first events, so it gets only the rest: built per
    socket, that was ~6 % of the server's CPU in a storm of 5,000 (py-spy). Snapshots are
    taken from the replica, which moves a reader batch at a time, so the sockets of a window
    share a few positions: one tail per position.
    """

    __slots__ = ("_ends", "_tails", "events", "prev", "scope", "text")

    def __init__(self, scope: str, prev: str, events: Sequence[Event]) -> None:
        self.scope, self.prev, self.events = scope, prev, events
        self.text: str | None = None
        self._ends: list[Pos] | None = None
        self._tails: dict[int, str] = {}

    def __call__(self) -> str:
        if self.text is None:
            self.text = dumps(diff_frame(self.scope, self.prev, self.events))
        return self.text

    def after(self, pos: Pos) -> str:
        """The frame of the events after ``pos`` (some are; the window is in log order)."""
        if self._ends is None:
            self._ends = [ev.pos for ev in self.events]
        start = bisect_right(self._ends, pos)
        text = self._tails.get(start)
        if text is None:
            text = self._tails[start] = dumps(
                diff_frame(self.scope, self.prev, self.events[start:])
            )
        return text


class DiffBatcher:
    """Collects one process's events per scope and flushes each window as diff frames."""

    def __init__(
        self, index: LocalIndex[Any], window: float, origin: str | Callable[[str], str]
    ) -> None:
        self._index = index
        self._window = window
        self._wait = window  # the next window's length (next_window() of the last flush)
        self._pending: dict[str, list[Event]] = {}
        self._last: dict[str, str] = {}  # scope -> seq of the last diff this process built
        # scope -> the position before any event of it this batcher saw (positions are per
        # scope: a room's are its shard's stream ids, the global scope's the reader's own)
        self._origin = _origin_of(origin)
        self._timer: asyncio.TimerHandle | None = None

    def add(self, ev: Event) -> None:
        """Queue ``ev``; the window starts with the first event after a flush."""
        self._pending.setdefault(ev.room, []).append(ev)
        if self._timer is None:
            self._timer = asyncio.get_running_loop().call_later(self._wait, self.flush)

    def flush(self) -> None:
        """Build and send every pending scope's diff now."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        pending, self._pending = self._pending, {}
        sent = 0
        for scope, events in pending.items():
            prev = self._last.get(scope) or self._origin(scope)
            self._last[scope] = events[-1].id
            shared = _SharedFrame(scope, prev, events)
            for sub in list(self._index.members(scope)):
                sent += deliver_diff(sub, scope, prev, events, shared)
        self._wait = next_window(self._window, sent)

    @property
    def wait(self) -> float:
        """The length of the next window, seconds."""
        return self._wait

    def reset(self, origin: str | Callable[[str], str]) -> None:
        """Forget everything pending (a resync replaced it with snapshots at ``origin``: one
        position, or each scope's)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._pending.clear()
        self._last.clear()
        self._origin = _origin_of(origin)


def _origin_of(origin: str | Callable[[str], str]) -> Callable[[str], str]:
    if isinstance(origin, str):
        return lambda scope: origin
    return origin


__all__ = ["GLOBAL", "DiffBatcher", "Event", "Subscriber", "coalesce", "diff_frame"]
