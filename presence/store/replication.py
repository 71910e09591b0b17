"""Whether a primary's writes so far are on a replica too: the hooks' guard against a lost
primary's events (docs/reliability.md, "One close, one offline").

Replication is asynchronous. In a Sentinel failover the old primary keeps accepting writes
for a few seconds after its replica was promoted (a planned ``SENTINEL FAILOVER``: until the
sentinels demote it, about 10 s); a reader connected to it reads them (a socket's close and
its ``user.offline``), and they are then lost with the demotion. Delivered, such an event is
followed by the new primary's own one for the same change (the sweep ends the connection
whose close it never saw): two ``user.offline`` for one close. The hooks therefore send an
entry only once its node confirms that every write so far is on at least one replica
(``WAIT 1``); a node in that window has no replica and cannot.

A node without an acking replica is asked about at its sentinels: one they still name the
primary and that has no replica in service (its replica died, or the old primary was
killed and not restarted) is alone, not doomed, and its entries go at once; one they no
longer name, or whose replica is in service but did not ack, waits.

Only nodes reached through a ``redis+sentinel://`` URL are asked: a plain URL names one
server with no failover to guard against, and a Cluster's nodes fail over by themselves
(not covered here).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import redis

from presence.conf import app_settings
from presence.redis_url import RedisTarget, parse_redis_url
from presence.store import topology
from presence.store.clients import sentinel_retry
from presence.store.keys import keys
from presence.store.topology import split_by_node

# A Pub/Sub channel nobody listens on (not a key: it holds nothing). PUBLISH is the cheapest
# command a primary passes to its replicas, so WAIT on the same connection then waits for
# the replication offset that covers every write made before it, other clients' included.
REPLICATION_PROBE = "presence:replication-probe"


def _sentinel_target(shard: int) -> RedisTarget | None:
    """``shard``'s node's target when it is reached through a Sentinel URL, else None."""
    if app_settings.REDIS_CLUSTER_URL:
        return None
    urls = app_settings.REDIS_SHARD_URLS
    target = parse_redis_url(urls[topology.node_of(shard)] if urls else app_settings.REDIS_URL)
    return target if target.is_sentinel else None


def _pairs(raw: list[str]) -> dict[str, str]:
    return dict(zip(raw[::2], raw[1::2], strict=True))


def _alone(target: RedisTarget, run_id: str) -> bool:
    """True when the sentinels name the node ``run_id`` their primary and know no replica of
    it in service (the replica is down, as after a kill -9 of the old primary): it has
    nothing to wait for. False for a primary the sentinels no longer name (the old one of a
    failover) or one with a replica that did not ack in time."""
    for host, port in target.sentinels:
        sentinel = redis.Redis(
            host=host,
            port=port,
            decode_responses=True,
            retry=sentinel_retry(),
            **target.sentinel_kwargs(socket_timeout=1.0),
        )
        try:
            # Raw SENTINEL replies (flat name/value lists): redis-py 6.4's own parsers of
            # these fail on an argument they do not take.
            master = _pairs(sentinel.execute_command("SENTINEL", "MASTER", target.master_name))
            if master.get("runid") != run_id:
                return False
            replicas = [
                _pairs(raw)
                for raw in sentinel.execute_command("SENTINEL", "REPLICAS", target.master_name)
            ]
        except (redis.ConnectionError, redis.TimeoutError):
            continue  # ask the next sentinel
        finally:
            sentinel.close()
        down = {"s_down", "o_down", "disconnected"}
        return not any(not down & set(r.get("flags", "").split(",")) for r in replicas)
    return False


def replicated_shards(last_ids: Mapping[int, str], *, timeout_ms: int) -> set[int]:
    """Those shards of ``last_ids`` (shard -> the id of the newest entry a reader read from
    its stream) whose entry is on a primary that has every write so far on at least one
    replica, waiting up to ``timeout_ms`` per node for it (one round trip per node asked).
    Shards on nodes without a Sentinel URL are in the answer without asking.

    The entry is looked up on the node that answers the WAIT: a reader's pooled connection
    may still reach the old primary while a newer one reaches the new primary, and an entry
    the answering node does not hold (it came from the other one) is not confirmed.

    WARNING: blocks up to ``timeout_ms`` on a node without a replica in sync: only for the
    hooks' readers, never on a socket's path.
    """
    wanted = sorted(last_ids)
    targets = {s: _sentinel_target(s) for s in wanted}
    confirmed = {s for s in wanted if targets[s] is None}
    for part in split_by_node([s for s in wanted if s not in confirmed]):
        pipe: Any = topology.client_for(part[0]).pipeline(transaction=False)
        for shard in part:
            pipe.xrange(keys(shard).events, last_ids[shard], last_ids[shard], count=1)
        pipe.publish(REPLICATION_PROBE, "")
        pipe.execute_command("WAIT", 1, timeout_ms)
        pipe.info("server")
        *found, _, acked, server = pipe.execute()
        target = targets[part[0]]
        assert target is not None
        if int(acked) < 1 and not _alone(target, str(server["run_id"])):
            continue
        confirmed.update(shard for shard, entry in zip(part, found, strict=True) if entry)
    return confirmed
