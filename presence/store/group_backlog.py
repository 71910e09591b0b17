"""Consumer groups' backlog, read by operators (the console, /metrics) and the session
writer's housekeeping: what each group has not done yet, and its idle consumers pruned.

Split from presence/store/groups.py (reading, claiming and acknowledging entries); the same
per-node pipelining over every shard's stream (``node_parts``).
"""

from __future__ import annotations

from typing import Any

from presence.store import topology
from presence.store.groups import node_parts
from presence.store.keys import Keys

# Undelivered entries counted by group_backlog per shard (one XRANGE page).
BACKLOG_PAGE = 10_000

# WARNING: what the dashboard and each scrape read at most per group and shard on Redis < 7
# (no lag in XINFO GROUPS): a bigger backlog shows as this many.
UNREAD_PAGE = 1_000


# ----------------------------------------------------------------------------- backlog
def group_backlog(group: str) -> dict[str, int]:
    """What ``group`` has not done yet, summed over the shards: ``pending`` (read, not
    acknowledged) and ``undelivered`` (appended after the group's last delivered id; one
    XRANGE page per shard, so at most ``BACKLOG_PAGE`` each). Zeros where the group does not
    exist."""
    pending = undelivered = 0
    for part in node_parts(None):
        client = topology.client_for(part[0])
        pipe: Any = client.pipeline(transaction=False)
        for shard in part:
            pipe.xinfo_groups(Keys(shard).events)
        infos = pipe.execute(raise_on_error=False)
        pipe = client.pipeline(transaction=False)
        counted = 0
        for shard, info in zip(part, infos, strict=True):
            if isinstance(info, Exception):
                continue
            mine = next((g for g in info if g["name"] == group), None)
            if mine is None:
                continue
            pending += int(mine["pending"])
            pipe.xrange(
                Keys(shard).events,
                f"({mine['last-delivered-id']}",
                "+",
                count=BACKLOG_PAGE,
            )
            counted += 1
        if counted:
            undelivered += sum(len(page) for page in pipe.execute())
    return {"pending": pending, "undelivered": undelivered}


def prune_consumers(group: str, *, idle_ms: int, keep: str = "") -> int:
    """Forget ``group``'s consumers (e.g. of web processes long gone) that hold nothing and
    were idle for ``idle_ms``, on every shard; a live one that was removed reappears at its
    next read."""
    removed = 0
    for part in node_parts(None):
        client = topology.client_for(part[0])
        pipe: Any = client.pipeline(transaction=False)
        for shard in part:
            pipe.xinfo_consumers(Keys(shard).events, group)
        replies = pipe.execute(raise_on_error=False)
        pipe = client.pipeline(transaction=False)
        for shard, consumers in zip(part, replies, strict=True):
            if isinstance(consumers, Exception):
                continue
            for c in consumers:
                if c["name"] != keep and int(c["pending"]) == 0 and int(c["idle"]) >= idle_ms:
                    pipe.xgroup_delconsumer(Keys(shard).events, group, c["name"])
                    removed += 1
        if len(pipe):
            pipe.execute()
    return removed


def groups_backlog() -> dict[str, dict[str, int]]:
    """Every group's ``pending`` (read, not acknowledged) and ``unread`` (appended after its
    last delivered entry), summed over the shards: one XINFO GROUPS per shard, pipelined per
    node, cheap enough for the dashboard and every scrape. Redis >= 7 counts ``unread``
    itself (its ``lag``); before that, or when it cannot tell, one XRANGE page of at most
    ``UNREAD_PAGE`` per shard is counted. Empty: no log yet."""
    out: dict[str, dict[str, int]] = {}
    for part in node_parts(None):
        client = topology.client_for(part[0])
        pipe: Any = client.pipeline(transaction=False)
        for shard in part:
            pipe.xinfo_groups(Keys(shard).events)
        infos = pipe.execute(raise_on_error=False)
        counting: list[str] = []
        pipe = client.pipeline(transaction=False)
        for shard, raw in zip(part, infos, strict=True):
            if isinstance(raw, Exception):
                continue
            for g in raw:
                name, lag = str(g["name"]), g.get("lag")
                totals = out.setdefault(name, {"pending": 0, "unread": 0})
                totals["pending"] += int(g["pending"])
                totals["unread"] += int(lag or 0)
                if lag is None:
                    counting.append(name)
                    pipe.xrange(
                        Keys(shard).events, f"({g['last-delivered-id']}", "+", count=UNREAD_PAGE
                    )
        if counting:
            for name, page in zip(counting, pipe.execute(), strict=True):
                out[name]["unread"] += len(page)
    return out
