"""Ending sockets when their credentials stop being good; operators' blocks of users.

A socket authenticates once, at its handshake. So when what it authenticated with ends — the
user logs out, changes their password, is deactivated or deleted, is blocked, or an operator
kicks the connection — the sockets are told to close, on whichever process holds them: each
connection's channel name is in Redis, and a ``session.end`` (or ``session.kick``) message
sent there reaches its consumer through the channel layer, like a kick always did.

Revocations (kept in Redis, checked by connect.lua in the connect's one round trip) make the
ending stick: a kicked connection's login session may not connect again for
``PRESENCE_KICK_REVOKE_SECONDS`` and tokens minted before the kick are refused; a logged-out
session's tokens are refused; a blocked user is refused until the block ends.

Receivers are connected by :func:`connect_receivers` (``PresenceConfig.ready()``). They see
``save()`` and ``delete()`` only: a bulk ``update()`` goes through :func:`do_deactivate_users`
or :func:`do_end_connections_after_bulk_change`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from asgiref.sync import async_to_sync
from channels.layers import get_channel_layer
from django.contrib.auth import get_user_model
from django.contrib.auth.signals import user_logged_out
from django.db import transaction
from django.db.models import Max, QuerySet
from django.db.models.signals import post_delete, post_save, pre_save
from django.http import HttpRequest
from django.utils import timezone
from redis.exceptions import RedisError

from presence import store
from presence.access.auth import login_hash
from presence.conf import app_settings
from presence.models import UserBlock
from presence.protocol.closecodes import CLOSE_FORBIDDEN, CLOSE_UNAUTHORIZED
from sessions_app.models import ConnectionSession, EndReason
from sessions_app.signals import connection_kicked

logger = logging.getLogger(__name__)

# Channel-layer message a consumer answers by closing with the code it carries.
END_MESSAGE_TYPE = "session.end"


@dataclass(frozen=True)
class Ending:
    """How sockets are closed for one cause: close code, error frame, session end reason."""

    code: int
    error: str
    message: str
    reason: EndReason

    def as_message(self) -> dict[str, Any]:
        """The ``session.end`` channel-layer message."""
        return {
            "type": END_MESSAGE_TYPE,
            "code": self.code,
            "error": self.error,
            "message": self.message,
            "reason": self.reason.value,
        }


LOGGED_OUT = Ending(CLOSE_UNAUTHORIZED, "session_ended", "you logged out", EndReason.LOGGED_OUT)
PASSWORD_CHANGED = Ending(
    CLOSE_UNAUTHORIZED,
    "credentials_changed",
    "the account's password changed; log in again",
    EndReason.REVOKED,
)
DEACTIVATED = Ending(
    CLOSE_FORBIDDEN, "account_disabled", "this account was deactivated", EndReason.REVOKED
)
DELETED = Ending(
    CLOSE_UNAUTHORIZED, "account_deleted", "this account was deleted", EndReason.REVOKED
)
BLOCKED = Ending(
    CLOSE_FORBIDDEN, "blocked", "this account is blocked by an operator", EndReason.REVOKED
)


# --------------------------------------------------------------------------- ending sockets
async def _send_all(channels: Sequence[str], message: dict[str, Any]) -> None:
    layer = get_channel_layer()
    assert layer is not None, "CHANNEL_LAYERS is not configured"
    for channel in channels:
        try:
            await layer.send(channel, message)
        except Exception as exc:  # a full channel: that socket is not reading anyway
            logger.warning("could not send %s to %s: %s", message["type"], channel, exc)


def do_end_user_connections(uid: int, ending: Ending, *, login: str | None = None) -> int:
    """Close the live sockets of user ``uid`` (only those of login session ``login`` when
    given) with ``ending``, on every process. Returns how many were told to close."""
    # Final: leaves the grace window still holds for the user are logged now, not later.
    store.release_user(uid)
    targets = store.user_connection_targets(uid)
    channels = [t.channel for t in targets if login is None or t.login == login]
    if channels:
        async_to_sync(_send_all)(channels, ending.as_message())
    logger.info("closing %d connection(s) of user %s: %s", len(channels), uid, ending.error)
    return len(channels)


def _end_quietly(uid: int, ending: Ending, *, login: str | None = None) -> None:
    """:func:`do_end_user_connections` from a signal: a Redis outage must not fail the
    logout or the save that caused it (the sockets then end with their TTL)."""
    try:
        do_end_user_connections(uid, ending, login=login)
    except (RedisError, OSError) as exc:
        logger.error("could not close the connections of user %s (%s): %s", uid, ending.error, exc)


# --------------------------------------------------------------------------- bulk changes
# WARNING: QuerySet.update() sends no signal, so ``User.objects.filter(...).update(
# is_active=False)`` (or a new password) closes no socket: the receivers below only see
# save() and delete(). Bulk changes go through these helpers instead.
def do_deactivate_users(users: QuerySet[Any]) -> int:
    """Deactivate every active user of ``users`` in one UPDATE and, after the commit, close
    their sockets (4403 ``account_disabled``); returns how many were deactivated."""
    with transaction.atomic():
        ids = list(users.filter(is_active=True).values_list("pk", flat=True))
        count = users.model._default_manager.filter(pk__in=ids).update(is_active=False)
        do_end_connections_after_bulk_change(ids, ending=DEACTIVATED)
    return int(count)


def do_end_connections_after_bulk_change(user_ids: Iterable[int], *, ending: Ending) -> None:
    """Close the sockets of ``user_ids`` with ``ending`` (``DEACTIVATED``,
    ``PASSWORD_CHANGED``, ``DELETED``, ``BLOCKED``) once the current transaction commits: for
    a bulk change made with ``update()`` or raw SQL, which the signals do not see."""
    for uid in dict.fromkeys(int(u) for u in user_ids):
        transaction.on_commit(partial(_end_quietly, uid, ending))


# --------------------------------------------------------------------------- blocks
def do_block_user(
    user: Any, *, until: dt.datetime, reason: str = "", by: Any | None = None
) -> UserBlock:
    """Block ``user`` until ``until``: their sockets close (4403) and new ones are refused."""
    block = UserBlock.objects.create(user=user, until=until, reason=reason, created_by=by)
    transaction.on_commit(lambda: _publish_block(user.pk))
    return block


def do_lift_blocks(blocks: Sequence[UserBlock]) -> int:
    """End blocks now; the users may connect again unless another block holds."""
    now = timezone.now()
    lifted = 0
    for block in blocks:
        if block.until > now:
            block.until = now
            block.save(update_fields=["until"])
            lifted += 1
    for uid in {b.user_id for b in blocks}:
        transaction.on_commit(partial(_publish_block, uid))
    return lifted


def _publish_block(uid: int) -> None:
    """Make Redis hold the user's longest active block (or none), then end their sockets."""
    until = UserBlock.objects.active().filter(user_id=uid).aggregate(until=Max("until"))["until"]
    if until is None:
        store.clear_user_block(uid)
        return
    store.set_user_block(uid, until_ms=int(until.timestamp() * 1000), reason="blocked")
    _end_quietly(uid, BLOCKED)


def publish_blocks() -> int:
    """Write every active block to Redis again (after Redis lost its data); returns how many
    users are blocked. Run by the session reaper and at web process start."""
    rows = UserBlock.objects.active().values("user_id").annotate(until=Max("until"))
    for row in rows:
        until_ms = int(row["until"].timestamp() * 1000)
        store.set_user_block(row["user_id"], until_ms=until_ms, reason="blocked")
    return len(rows)


# --------------------------------------------------------------------------- receivers
def on_user_logged_out(sender: Any, request: HttpRequest, user: Any, **kwargs: Any) -> None:
    """Logout: close the sockets opened with this login session; refuse its tokens."""
    if user is None or not hasattr(request, "session"):
        return
    login = login_hash(request.session.session_key)
    if not login:
        return
    try:
        # Tokens minted by this session are good for TOKEN_MAX_AGE: refuse them that long.
        store.revoke_login(login, seconds=app_settings.TOKEN_MAX_AGE + 60, uid=user.pk)
    except (RedisError, OSError) as exc:
        logger.error("could not revoke the login session of user %s: %s", user.pk, exc)
    _end_quietly(user.pk, LOGGED_OUT, login=login)


_WATCHED_FIELDS = {"password", "is_active"}


def on_user_pre_save(sender: Any, instance: Any, update_fields: Any = None, **kwargs: Any) -> None:
    """Remember the password and active flag the row had, when this save may change them."""
    if instance.pk is None or (
        update_fields is not None and not _WATCHED_FIELDS & set(update_fields)
    ):
        return  # e.g. the login's update_fields=["last_login"]: no query
    instance._presence_before = (
        type(instance)
        ._default_manager.filter(pk=instance.pk)
        .values("password", "is_active")
        .first()
    )


def on_user_post_save(sender: Any, instance: Any, created: bool, **kwargs: Any) -> None:
    """Deactivated or password changed: close all the user's sockets after the commit."""
    before = instance.__dict__.pop("_presence_before", None)
    if created or not before:
        return
    ending = None
    if before["is_active"] and not instance.is_active:
        ending = DEACTIVATED
    elif before["password"] != instance.password:
        ending = PASSWORD_CHANGED
    if ending is not None:
        uid = instance.pk
        transaction.on_commit(lambda: _end_quietly(uid, ending))


def on_user_post_delete(sender: Any, instance: Any, **kwargs: Any) -> None:
    """Deleted: close all the user's sockets after the commit."""
    uid = instance.pk
    transaction.on_commit(lambda: _end_quietly(uid, DELETED))


def on_connection_kicked(
    sender: Any, session: ConnectionSession, revoke_seconds: float | None, **kwargs: Any
) -> None:
    """A kick is terminal: revoke the connection's login session and older tokens (before
    its socket is told to close, so an immediate reconnect is refused)."""
    seconds = app_settings.KICK_REVOKE_SECONDS if revoke_seconds is None else revoke_seconds
    store.revoke_user_credentials(session.user_id)
    login = store.connection_login(str(session.id), uid=session.user_id)
    store.revoke_login(login, seconds=seconds, uid=session.user_id)
    # The kicked connection leaves at once (reason kicked is never held); so do the leaves
    # of the user's earlier closes that the grace window still holds.
    store.release_user(session.user_id)


def connect_receivers() -> None:
    """Connect this module's receivers (called once from ``PresenceConfig.ready()``)."""
    user_model = get_user_model()
    uid = "presence.actions.revocation"
    user_logged_out.connect(on_user_logged_out, dispatch_uid=uid)
    pre_save.connect(on_user_pre_save, sender=user_model, dispatch_uid=uid)
    post_save.connect(on_user_post_save, sender=user_model, dispatch_uid=uid)
    post_delete.connect(on_user_post_delete, sender=user_model, dispatch_uid=uid)
    connection_kicked.connect(on_connection_kicked, dispatch_uid=uid)
