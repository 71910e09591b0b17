"""Operator introspection of one web process: its request list and its answers.

The console (a sync view) appends a request to ``{P}:proc:<id>:ask`` and polls the answer
key ``{P}:proc:<id>:reply:<rid>``; the process (presence.live.inspector) waits on its list
with BLPOP on its blocking client and writes the answer. Both keys share the prefix's hash
tag and expire: a request nobody pops is gone with its list, an answer nobody reads is gone
after its TTL. Answers are bounded in size by the writer (``INSPECT_REPLY_MAX_BYTES``).
"""

from __future__ import annotations

from typing import Any

import redis
import redis.asyncio as aredis

from presence.store.keys import control_keys

# Requests kept per process: an operator clicking repeatedly cannot grow the list.
INSPECT_ASK_MAX = 20
# The largest answer a process writes (a profile of 30 s at 100 Hz fits with a wide margin).
INSPECT_REPLY_MAX_BYTES = 2_000_000


def push_inspect_request(client: redis.Redis, proc_id: str, request: str, *, ttl_ms: int) -> bool:
    """Queue ``request`` (JSON) for process ``proc_id``; False when no such process is
    registered (then nothing is queued). One MULTI."""
    k = control_keys()
    if not client.exists(k.proc(proc_id)):
        return False
    pipe = client.pipeline(transaction=True)
    pipe.rpush(k.proc_ask(proc_id), request)
    pipe.ltrim(k.proc_ask(proc_id), -INSPECT_ASK_MAX, -1)
    pipe.pexpire(k.proc_ask(proc_id), ttl_ms)
    pipe.execute()
    return True


def read_inspect_reply(client: redis.Redis, proc_id: str, request_id: str) -> str | None:
    """The process's answer to ``request_id`` (JSON), or None while there is none."""
    raw: Any = client.get(control_keys().proc_reply(proc_id, request_id))
    return None if raw is None else str(raw)


async def await_inspect_request(client: aredis.Redis, proc_id: str, *, block: float) -> str | None:
    """Wait up to ``block`` seconds for the next request to ``proc_id`` (BLPOP)."""
    popped: Any = await client.blpop([control_keys().proc_ask(proc_id)], timeout=block)  # type: ignore[misc]
    return None if popped is None else str(popped[1])


async def write_inspect_reply(
    client: aredis.Redis, proc_id: str, request_id: str, payload: str, *, ttl_ms: int
) -> None:
    """Store the answer to ``request_id``; refused when larger than INSPECT_REPLY_MAX_BYTES."""
    if len(payload) > INSPECT_REPLY_MAX_BYTES:
        raise ValueError(f"inspect reply of {len(payload)} bytes is over the bound")
    await client.set(control_keys().proc_reply(proc_id, request_id), payload, px=ttl_ms)
