"""Reads of the connection sessions other apps use (when a user was last seen)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from django.db.models import Case, Max, When
from django.db.models.functions import Coalesce

from sessions_app.models import ConnectionSession, EndReason


def last_seen_expression() -> Case:
    """The last moment a session saw its user: a timed-out one at its last heartbeat (it
    "ended" a TTL after the user was last heard from), any other at its end, or failing that
    its last heartbeat or start."""
    return Case(
        When(end_reason=EndReason.TIMEOUT, then=Coalesce("last_heartbeat_at", "ended_at")),
        default=Coalesce("ended_at", "last_heartbeat_at", "connected_at"),
    )


def last_seen_by_user(user_ids: Iterable[int]) -> dict[int, dt.datetime]:
    """user id -> the latest moment any of their sessions saw them; one query for all.

    Users without a session are left out.
    """
    ids = list(user_ids)
    if not ids:
        return {}
    rows = (
        ConnectionSession.objects.filter(user_id__in=ids)
        .values("user_id")
        .annotate(seen=Max(last_seen_expression()))
        .values_list("user_id", "seen")
    )
    return {uid: seen for uid, seen in rows if seen is not None}
