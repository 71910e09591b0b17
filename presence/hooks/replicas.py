"""The hooks send only what a replica holds too: one close gives one ``user.offline``.

A log entry read from a primary that has lost its replica (the old primary of a Sentinel
failover, between the replica's promotion and its own demotion) may vanish with that
primary; the new primary then logs the same change again (the sweep ends the connection
whose close it never saw), and a hook sent for both would say it twice
(docs/reliability.md, "One close, one offline"). So the readers ask the entries' nodes
(``store.replicated_shards``: ``WAIT 1`` after a write) and keep unconfirmed entries pending:
they are read again, sent once a replica has them, or gone with the demoted primary.

A primary the sentinels still name and that has no replica in service (its replica died,
or it is the promoted replica of a kill -9 not yet restarted) has nothing to wait for: its
entries go at once (store.replicated_shards asks the sentinels). Should a node stay
unconfirmed anyway for longer than ``HOLD_MAX`` (a replica in service that never acks, the
sentinels unreachable), its entries are sent all the same, with one warning: the hooks must
not stop for a missing replica.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence

from presence import store

logger = logging.getLogger(__name__)

# Milliseconds a read waits for its node's replica (WAIT's timeout): a healthy replica acks
# in about a millisecond; one that fell behind gets this long before the entries wait.
WAIT_MS = 500
# Seconds a primary may go without a replica before its entries are sent unconfirmed: longer
# than a failover's window (the sentinels demote the old primary about 10 s after promoting
# its replica; docs/reliability.md).
HOLD_MAX = 30.0
# Seconds until a reader reads held entries again.
RETRY = 1.0

_lock = threading.Lock()
_unconfirmed_since: dict[int, float] = {}  # shard -> monotonic time of its first miss
_warned: set[int] = set()  # shards sent unconfirmed since their last confirmation


def _id_order(stream_id: str) -> tuple[int, int]:
    ms, _, seq = stream_id.partition("-")
    return int(ms), int(seq or 0)


def split_replicated(
    entries: Sequence[store.GroupEntry],
) -> tuple[list[store.GroupEntry], list[store.GroupEntry]]:
    """``entries`` split into (ready to send, held until a replica has them), in order; a
    user's entries after one of theirs that waits wait too."""
    if not entries:
        return [], []
    shards = {e.shard for e in entries}
    # The newest entry read per shard (a trimmed one, without fields, cannot be looked up).
    last_ids: dict[int, str] = {}
    for entry in entries:
        if entry.fields:
            last_ids[entry.shard] = max(
                last_ids.get(entry.shard, entry.stream_id), entry.stream_id, key=_id_order
            )
    confirmed = store.replicated_shards(last_ids, timeout_ms=WAIT_MS) | (shards - set(last_ids))
    now = time.monotonic()
    with _lock:
        for shard in shards:
            if shard in confirmed:
                _unconfirmed_since.pop(shard, None)
                _warned.discard(shard)
                continue
            since = _unconfirmed_since.setdefault(shard, now)
            if now - since >= HOLD_MAX:
                confirmed.add(shard)
                if shard not in _warned:
                    _warned.add(shard)
                    logger.warning(
                        "hooks: shard %d's primary has had no replica for %.0f s; "
                        "its events are sent unconfirmed",
                        shard,
                        now - since,
                    )
    ready: list[store.GroupEntry] = []
    held: list[store.GroupEntry] = []
    waiting_users: set[str] = set()
    for entry in entries:
        uid = entry.fields.get("u", "")
        # A user's events keep their order: after a held one, theirs on other shards wait.
        if entry.shard in confirmed and not (uid and uid in waiting_users):
            ready.append(entry)
            continue
        held.append(entry)
        if uid:
            waiting_users.add(uid)
    return ready, held
