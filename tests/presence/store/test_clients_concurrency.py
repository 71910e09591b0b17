"""The commands of one event loop reach Redis side by side, not one after the other.

redis-py before 7.2 held its connection pool's lock while it checked the connection it
handed out, and that check waits for the event loop (a read under a zero timeout): one loop
iteration or two per command, during which every other command of the loop waited for the
lock. In a connect storm (400 handshakes in flight, two scripts each) a script waited a
quarter of a second for its turn and a handshake half a second (docs/performance.md, eighth
pass). requirements.txt pins a redis-py without that lock; this keeps it so.

The test reads the pool's set of connections in use, a private attribute of redis-py's
``ConnectionPool``: how many commands got a connection says whether they queued, without
a clock (a count of loop iterations or a time would move with the machine's load).
"""

from __future__ import annotations

import asyncio

from presence import store

COMMANDS = 200
KEY = "presence:test:concurrency"


async def test_concurrent_commands_take_their_connections_at_once() -> None:
    client = store.get_async_redis()
    pool = client.connection_pool
    # First round: the pool opens its connections (a connect waits for the loop on its own).
    await asyncio.gather(*(client.ping() for _ in range(COMMANDS)))
    assert not pool._in_use_connections

    tasks = [asyncio.ensure_future(client.incr(KEY)) for _ in range(COMMANDS)]
    await asyncio.sleep(0)  # each task runs to its first wait
    taken = len(pool._in_use_connections)
    await asyncio.gather(*tasks)

    assert await client.get(KEY) == str(COMMANDS)
    # Every command holds a connection while the pool checks it; behind redis-py 6's lock
    # only the first did, and the others waited for its check to end (measured: 1).
    assert taken == COMMANDS
