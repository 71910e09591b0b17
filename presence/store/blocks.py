"""Blocks, revoked credentials, and finding a user's sockets (presence.actions.revocation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from presence.conf import app_settings
from presence.store.clients import now_ms
from presence.store.keys import keys
from presence.store.shards import login_home, user_home
from presence.store.topology import aclient_for, client_for


# Used by presence.actions.revocation.
@dataclass(frozen=True)
class ConnTarget:
    """Where one live connection's socket can be reached, and with what credentials."""

    cid: str
    channel: str
    login: str


def user_connection_targets(uid: int, *, now: int | None = None) -> list[ConnTarget]:
    """The user's live connections with their channel names: two round trips, bounded by
    the per-user connection limit."""
    k = keys(user_home(uid))
    client = client_for(k.shard)
    cids: Any = client.zrangebyscore(k.user_conns(uid), f"({now or now_ms()}", "+inf")
    if not cids:
        return []
    pipe = client.pipeline(transaction=False)
    for cid in cids:
        pipe.hmget(k.conn(cid), ["channel", "login"])
    targets = []
    for cid, (channel, login) in zip(cids, pipe.execute(), strict=True):
        if channel:
            targets.append(ConnTarget(str(cid), str(channel), str(login or "")))
    return targets


def connection_login(cid: str, *, uid: int) -> str:
    """The login-session hash a live connection of ``uid`` authenticated with ("" when
    unknown)."""
    k = keys(user_home(uid))
    return str(client_for(k.shard).hget(k.conn(cid), "login") or "")


def revoke_user_credentials(uid: int, *, now: int | None = None) -> None:
    """Refuse credentials of ``uid`` issued until now (tokens minted before a kick)."""
    k = keys(user_home(uid))
    # Tokens live PRESENCE_TOKEN_MAX_AGE at most: the mark may go when the last one expired.
    ttl_ms = int(app_settings.TOKEN_MAX_AGE * 1000) + 60_000
    client_for(k.shard).set(k.user_revoked(uid), now or now_ms(), px=ttl_ms)


def revoke_login(login: str, *, seconds: float, uid: int) -> None:
    """Refuse new connections of ``uid``'s login session ``login`` for ``seconds``.

    Two marks: one on the user's shard (connect.lua checks it with the user's keys) and one
    on the login's shard (a handshake's cookie check, which knows no user: alogin_revoked).
    """
    if not login or seconds <= 0:
        return
    for shard in {user_home(uid), login_home(login)}:
        client_for(shard).set(keys(shard).login_revoked(login), 1, px=int(seconds * 1000))


async def alogin_revoked(login: str) -> bool:
    """Whether new connections of the login session ``login`` are refused now."""
    k = keys(login_home(login))
    return bool(login) and bool(await aclient_for(k.shard).exists(k.login_revoked(login)))


def set_user_block(uid: int, *, until_ms: int, reason: str) -> None:
    """Refuse new connections of ``uid`` until ``until_ms`` (the key expires then)."""
    k = keys(user_home(uid))
    client_for(k.shard).set(k.user_block(uid), reason or "blocked", pxat=until_ms)


def clear_user_block(uid: int) -> None:
    """Lift an operator's block of ``uid``."""
    k = keys(user_home(uid))
    client_for(k.shard).delete(k.user_block(uid))


def user_block_ttl_ms(uid: int) -> int:
    """Milliseconds left of ``uid``'s block (0 when not blocked)."""
    k = keys(user_home(uid))
    left: Any = client_for(k.shard).pttl(k.user_block(uid))
    return max(0, int(left))
