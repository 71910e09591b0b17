"""Writes of the operator console: disconnecting a user, or one of their connections.

Both go through ``sessions_app.actions.do_kick_session`` (the socket closes with 4410 and
its session ends as ``kicked``). Disconnecting all of a user's connections is the one
function :func:`do_disconnect_user`, so a Redis-side "disconnect user" can replace its body
without touching the views.
"""

from __future__ import annotations

import uuid
from typing import Any

from django.contrib.auth.models import AbstractUser, AnonymousUser

from sessions_app.actions import do_kick_session
from sessions_app.models import ConnectionSession

# The dedicated permission (sessions_app migration 0002) of every disconnect, here and in
# the sessions admin's kick action.
KICK_PERMISSION = "sessions_app.kick_connectionsession"


def can_disconnect(user: AbstractUser | AnonymousUser | Any) -> bool:
    """Whether ``user`` may disconnect other users' sessions."""
    return bool(user.is_active and user.is_staff and user.has_perm(KICK_PERMISSION))


def do_disconnect_user(user_id: int) -> int:
    """Close every live connection of the user with 4410; returns how many were asked to."""
    sessions = ConnectionSession.objects.live().filter(user_id=user_id)
    return sum(1 for session in sessions if do_kick_session(session))


def do_disconnect_connection(session_id: str, *, user_id: int | None = None) -> bool:
    """Close one live connection with 4410; False when it is not live (or not the user's)."""
    try:
        sid = uuid.UUID(session_id)
    except ValueError:
        return False
    sessions = ConnectionSession.objects.live().filter(id=sid)
    if user_id is not None:
        sessions = sessions.filter(user_id=user_id)
    session = sessions.first()
    return session is not None and do_kick_session(session)
