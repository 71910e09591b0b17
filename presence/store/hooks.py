"""The server-side hooks' state: per-user holds and the webhook backlog."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import redis

from presence.store.keys import control_keys

# The hooks read the event log through their own consumer groups (presence.store.groups).


@dataclass(frozen=True)
class HookHold:
    """A user whose events wait for a failing signal receiver (retried with back-off)."""

    due_ms: int
    attempts: int
    first_ms: int


def read_hook_holds(client: redis.Redis) -> dict[str, HookHold]:
    """Every held user (uid as a string) and when their events are tried again."""
    raw: Any = client.hgetall(control_keys().hook_holds)
    holds = {}
    for uid, value in raw.items():
        due, attempts, first = (int(x) for x in str(value).split(":"))
        holds[str(uid)] = HookHold(due, attempts, first)
    return holds


def set_hook_hold(client: redis.Redis, uid: str, hold: HookHold) -> None:
    """Hold ``uid``'s events until ``hold.due_ms``."""
    client.hset(control_keys().hook_holds, uid, f"{hold.due_ms}:{hold.attempts}:{hold.first_ms}")


def clear_hook_holds(client: redis.Redis, uids: Iterable[str]) -> None:
    """Release users whose held event went through (or was given up)."""
    uids = list(uids)
    if uids:
        client.hdel(control_keys().hook_holds, *uids)


def write_webhook_backlog(client: redis.Redis, backlog: Mapping[str, int]) -> None:
    """Replace the per-endpoint backlog the metrics scrape reads."""
    pipe = client.pipeline(transaction=True)
    pipe.delete(control_keys().webhook_backlog)
    if backlog:
        pipe.hset(control_keys().webhook_backlog, mapping=dict(backlog))
    pipe.execute()


def read_webhook_backlog(client: redis.Redis) -> dict[str, int]:
    """Undelivered webhook events per endpoint name (as of the last routing run)."""
    raw: Any = client.hgetall(control_keys().webhook_backlog)
    return {str(k): int(v) for k, v in raw.items()}
