"""Hook events: what the server-side hooks say, derived from presence event-log entries.

One log entry gives zero, one or two hook events (docs/hooks.md):

=================  ==========================================================================
log entry          hook events
=================  ==========================================================================
``join`` r=''      ``user.online`` (the user's first live connection)
``leave`` r=''     ``user.offline`` with the reason (``timeout`` is reported as ``expired``)
``status`` r=''    ``user.status`` (the per-room copies of a status change are not repeated)
``join`` r=room    ``room.occupied`` first when the room had no member (``o`` = 1), then
                   ``room.join``
``join`` x=1       none: the user's lapsed connection (no leave logged, and none will be)
                   still listed them; they never went offline as far as the log says
``leave`` r=room   ``room.leave``, then ``room.vacated`` when no member is left (``v`` = 1)
=================  ==========================================================================

``open``, ``close`` and ``frame`` entries give none. An event's id is ``<log id>:<type>``:
the same entry read twice gives the same ids, which is what receivers deduplicate on.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from presence import store
from presence.protocol.events import (
    ROOM_JOIN,
    ROOM_LEAVE,
    ROOM_OCCUPIED,
    ROOM_VACATED,
    USER_OFFLINE,
    USER_ONLINE,
    USER_STATUS,
    EventPayload,
)

# End reasons in the log whose hook name differs: a lapsed connection "expired".
REASONS = {"timeout": "expired"}


@dataclass(frozen=True)
class HookEvent:
    """One hook event; ``position`` is the event-log id it came from."""

    id: str
    type: str
    at_ms: int
    user_id: int
    username: str
    room: str | None
    status: str
    reason: str | None
    position: str

    @property
    def at(self) -> dt.datetime:
        """When it happened (the time the log entry was written with)."""
        return dt.datetime.fromtimestamp(self.at_ms / 1000, tz=dt.UTC)

    def payload(self) -> EventPayload:
        """The JSON-ready form webhooks send."""
        return {
            "id": self.id,
            "type": self.type,
            "at": self.at.isoformat().replace("+00:00", "Z"),
            "at_ms": self.at_ms,
            "user": {"id": self.user_id, "username": self.username},
            "room": self.room,
            "status": self.status,
            "reason": self.reason,
            "position": self.position,
        }


def _types(kind: str, room: str, fields: dict[str, str]) -> list[str]:
    if kind == "join":
        if fields.get("x") == "1":
            return []  # the user was never logged leaving (lapsed, not swept): no second one
        if not room:
            return [USER_ONLINE]
        return [ROOM_OCCUPIED, ROOM_JOIN] if fields.get("o") == "1" else [ROOM_JOIN]
    if kind == "leave":
        if not room:
            return [USER_OFFLINE]
        return [ROOM_LEAVE, ROOM_VACATED] if fields.get("v") == "1" else [ROOM_LEAVE]
    if kind == "status" and not room:
        return [USER_STATUS]
    return []


def events_of(entry: store.GroupEntry) -> list[HookEvent]:
    """The hook events of one log entry, in the order they are sent.

    Raises KeyError/ValueError when a join/leave/status entry is malformed.
    """
    fields = entry.fields
    room = fields.get("r", "")
    types = _types(fields.get("k", ""), room, fields)
    if not types:
        return []
    why = fields.get("why")
    reason = REASONS.get(why, why) if why else None
    common: dict[str, Any] = {
        # When it happened: a global leave of a swept connection carries its lapse ('at',
        # end.lua), which the sweep logs later (t); other entries happened when logged.
        "at_ms": int(fields.get("at") or fields["t"]),
        "user_id": int(fields["u"]),
        "username": fields.get("n", ""),
        "room": room or None,
        "status": fields.get("s", "online"),
        "position": entry.id,
    }
    return [
        HookEvent(
            id=f"{entry.id}:{t}",
            type=t,
            reason=reason if t in (USER_OFFLINE, ROOM_LEAVE, ROOM_VACATED) else None,
            **common,
        )
        for t in types
    ]


def backoff_seconds(attempts: int, *, base: float, cap: float, rand: float) -> float:
    """Delay before retry number ``attempts`` (1 = the first retry): ``base * 2^(n-1)``
    capped at ``cap``, with "equal jitter" (half fixed, half random by ``rand`` in [0, 1)),
    so a crowd of failures does not retry in lockstep yet never retries at once."""
    delay = min(cap, base * 2 ** max(0, attempts - 1))
    return delay / 2 + delay / 2 * rand
