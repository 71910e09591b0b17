"""Connection-session writes. Live sockets are reached only through the channel layer."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.db.models import Case, DateTimeField, F, Value, When
from django.utils import timezone

from .models import ConnectionSession, EndReason
from .signals import connection_kicked

# Channel-layer message a presence consumer answers by closing with 4410.
KICK_MESSAGE_TYPE = "session.kick"


def do_start_session(
    *,
    session_id: uuid.UUID,
    user_id: int,
    channel_name: str,
    ip: str | None,
    user_agent: str,
) -> ConnectionSession:
    """Record a new connection."""
    return ConnectionSession.objects.create(
        id=session_id,
        user_id=user_id,
        channel_name=channel_name,
        ip=ip,
        user_agent=user_agent[:512],
        connected_at=timezone.now(),
    )


@dataclass(frozen=True)
class SessionStart:
    """What a new connection's row is made of (see :func:`do_start_sessions`)."""

    session_id: uuid.UUID
    user_id: int
    channel_name: str
    ip: str | None
    user_agent: str
    connected_at: dt.datetime


def known_user_ids(user_ids: Iterable[int]) -> set[int]:
    """Which of ``user_ids`` still exist (one query)."""
    ids = set(user_ids)
    if not ids:
        return set()
    return set(get_user_model()._default_manager.filter(pk__in=ids).values_list("pk", flat=True))


def do_start_sessions(
    starts: Sequence[SessionStart], *, known_users: set[int] | None = None
) -> int:
    """Record many new connections in one INSERT; returns how many rows were offered.

    Written behind, from a log delivered at least once: a row that exists already is left as
    it is (``ignore_conflicts``), and connections of users deleted meanwhile are skipped,
    since their row could not reference the user. ``known_users`` is
    :func:`known_user_ids` of the starts, when the caller read it already (outside its
    transaction: on SQLite a transaction that reads before it writes cannot wait for the
    write lock). A user deleted after that read fails the transaction at commit; the caller
    retries and skips them then.
    """
    if not starts:
        return 0
    known = known_users if known_users is not None else known_user_ids(s.user_id for s in starts)
    rows = [
        ConnectionSession(
            id=s.session_id,
            user_id=s.user_id,
            channel_name=s.channel_name[:255],
            ip=s.ip,
            user_agent=s.user_agent[:512],
            connected_at=s.connected_at,
        )
        for s in starts
        if s.user_id in known
    ]
    ConnectionSession.objects.bulk_create(rows, ignore_conflicts=True)
    return len(rows)


def do_end_session(
    session_id: uuid.UUID | str, *, reason: EndReason, ended_at: dt.datetime | None = None
) -> bool:
    """End a live session; False when it had already ended (the first ending wins)."""
    updated = (
        ConnectionSession.objects.live()
        .filter(id=session_id)
        .update(ended_at=ended_at or timezone.now(), end_reason=reason)
    )
    return updated == 1


def do_end_sessions(ends: Iterable[tuple[str, dt.datetime]], *, reason: EndReason) -> int:
    """End many live sessions, each at its own time; returns how many were live."""
    return do_end_sessions_at([(sid, at, None) for sid, at in ends], reason=reason)


def do_kick_session(session: ConnectionSession, *, revoke_seconds: float | None = None) -> bool:
    """End a live session for good: its credentials are revoked, then its socket closes
    with 4410. False if it already ended.

    ``revoke_seconds``: how long the kicked connection's login session may not connect
    again (None: ``PRESENCE_KICK_REVOKE_SECONDS``). Receivers of ``connection_kicked`` (the
    presence app) revoke before the socket is told to close, so a client reconnecting the
    moment it sees 4410 is refused.
    """
    if not session.is_live:
        return False
    connection_kicked.send(sender=ConnectionSession, session=session, revoke_seconds=revoke_seconds)
    layer = get_channel_layer()
    assert layer is not None, "CHANNEL_LAYERS is not configured"
    async_to_sync(layer.send)(session.channel_name, {"type": KICK_MESSAGE_TYPE})
    return True


# ---- bulk writes of the periodic tasks (presence.jobs.sweep, presence.jobs.flush) and of
# the session log (presence.jobs.sessionlog)
# WARNING: an UPDATE ... CASE with one WHEN per row costs rows x branches to evaluate: a
# mass disconnect's 3,000 ends in one statement took 1.0-1.1 s of CPU on SQLite, in
# statements of 100 rows 0.55 s (the rest is Django's per-row work). Each statement takes at
# most CASE_ROWS rows; that also keeps it far below the database's bound-parameter limits.
CASE_ROWS = 100


def _chunks(rows: Sequence[Any]) -> Iterable[Sequence[Any]]:
    for start in range(0, len(rows), CASE_ROWS):
        yield rows[start : start + CASE_ROWS]


def _parse_ids(ids: Iterable[str]) -> dict[str, uuid.UUID]:
    parsed = {}
    for sid in ids:
        try:
            parsed[sid] = uuid.UUID(sid)
        except ValueError:
            continue  # not a session id: nothing in the table to update
    return parsed


def do_end_sessions_at(
    ends: Sequence[tuple[str, dt.datetime, dt.datetime | None]], *, reason: EndReason
) -> int:
    """End many live sessions, an UPDATE per ``CASE_ROWS``: (session id, ended_at,
    last_heartbeat_at).

    Sessions that ended already keep their end (the first ending wins). Returns how many
    were still live. ``last_heartbeat_at`` None leaves that column as it is.
    """
    return sum(_end_sessions_at(chunk, reason=reason) for chunk in _chunks(ends))


def _end_sessions_at(
    ends: Sequence[tuple[str, dt.datetime, dt.datetime | None]], *, reason: EndReason
) -> int:
    ids = _parse_ids(sid for sid, _, _ in ends)
    if not ids:
        return 0
    ended_at = Case(
        *[When(pk=ids[sid], then=Value(at)) for sid, at, _ in ends if sid in ids],
        output_field=DateTimeField(),
    )
    beats = [When(pk=ids[sid], then=Value(hb)) for sid, _, hb in ends if sid in ids and hb]
    update: dict[str, Any] = {"ended_at": ended_at, "end_reason": reason}
    if beats:
        update["last_heartbeat_at"] = Case(
            *beats, default=F("last_heartbeat_at"), output_field=DateTimeField()
        )
    return ConnectionSession.objects.live().filter(pk__in=ids.values()).update(**update)


def do_record_heartbeats(beats: Sequence[tuple[str, dt.datetime]]) -> int:
    """Set ``last_heartbeat_at`` of many live sessions, an UPDATE per ``CASE_ROWS``; returns
    rows updated."""
    return sum(_record_heartbeats(chunk) for chunk in _chunks(beats))


def _record_heartbeats(beats: Sequence[tuple[str, dt.datetime]]) -> int:
    ids = _parse_ids(sid for sid, _ in beats)
    if not ids:
        return 0
    last = Case(
        *[When(pk=ids[sid], then=Value(at)) for sid, at in beats if sid in ids],
        default=F("last_heartbeat_at"),
        output_field=DateTimeField(),
    )
    return (
        ConnectionSession.objects.live().filter(pk__in=ids.values()).update(last_heartbeat_at=last)
    )
