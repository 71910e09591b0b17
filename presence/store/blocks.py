"""Blocks, revoked credentials, and finding a user's sockets (presence.actions.revocation)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from presence.conf import app_settings
from presence.store.clients import now_ms
from presence.store.keys import keys
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
    client = client_for(0)  # the shard of its keys: shard 0 until the scripts are split
    k = keys()
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


def connection_login(cid: str) -> str:
    """The login-session hash a live connection authenticated with ("" when unknown)."""
    client = client_for(0)  # the shard of its keys: shard 0 until the scripts are split
    return str(client.hget(keys().conn(cid), "login") or "")


def revoke_user_credentials(uid: int, *, now: int | None = None) -> None:
    """Refuse credentials of ``uid`` issued until now (tokens minted before a kick)."""
    client = client_for(0)  # the shard of its keys: shard 0 until the scripts are split
    # Tokens live PRESENCE_TOKEN_MAX_AGE at most: the mark may go when the last one expired.
    ttl_ms = int(app_settings.TOKEN_MAX_AGE * 1000) + 60_000
    client.set(keys().user_revoked(uid), now or now_ms(), px=ttl_ms)


def revoke_login(login: str, *, seconds: float) -> None:
    """Refuse new connections of the login session ``login`` for ``seconds``."""
    client = client_for(0)  # the shard of its keys: shard 0 until the scripts are split
    if login and seconds > 0:
        client.set(keys().login_revoked(login), 1, px=int(seconds * 1000))


async def alogin_revoked(login: str) -> bool:
    """Whether new connections of the login session ``login`` are refused now."""
    client = aclient_for(0)  # the shard of its keys: shard 0 until the scripts are split
    return bool(login) and bool(await client.exists(keys().login_revoked(login)))


def set_user_block(uid: int, *, until_ms: int, reason: str) -> None:
    """Refuse new connections of ``uid`` until ``until_ms`` (the key expires then)."""
    client = client_for(0)  # the shard of its keys: shard 0 until the scripts are split
    client.set(keys().user_block(uid), reason or "blocked", pxat=until_ms)


def clear_user_block(uid: int) -> None:
    """Lift an operator's block of ``uid``."""
    client = client_for(0)  # the shard of its keys: shard 0 until the scripts are split
    client.delete(keys().user_block(uid))


def user_block_ttl_ms(uid: int) -> int:
    """Milliseconds left of ``uid``'s block (0 when not blocked)."""
    client = client_for(0)  # the shard of its keys: shard 0 until the scripts are split
    left: Any = client.pttl(keys().user_block(uid))
    return max(0, int(left))
