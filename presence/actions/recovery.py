"""Recovery after the store lost state: re-assert what this process's live sockets prove.

A Redis failover loses the writes the old primary had not replicated yet, and a Redis that
restarts without its data loses everything; the web processes keep their sockets open
through both (presence/live/batching.py holds the heartbeats). The first heartbeat of a
socket after that finds its connection unknown but not ended (heartbeat.lua answers
``HB_LOST``), and the socket writes itself back (reassert.lua): connection, rooms, status.
Every socket heartbeats once per interval, so the store is whole again within one heartbeat
interval of its return. No leave is logged, and the joins it logs are marked so that the
hooks send no user.online for users who never left (docs/reliability.md).
"""

from __future__ import annotations

import logging

from presence import store
from presence.obs import metrics

logger = logging.getLogger(__name__)


async def do_reassert_connection(live: store.Liveness) -> bool:
    """Write back a live connection the store lost; False when it was ended there instead.

    One round trip, only after a loss (never on the normal hot path).
    """
    state, _ = await store.reassert(live)
    if state == 1:
        metrics.connections_reasserted(1)
    return state != 0
