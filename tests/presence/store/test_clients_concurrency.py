"""The commands of one event loop reach Redis side by side, not one after the other.

redis-py before 7.2 held its connection pool's lock while it checked the connection it
handed out, and that check waits for the event loop (a zero timeout on a read): one loop
iteration or two per command, during which every other command of the loop waited for the
lock. In a connect storm (400 handshakes in flight, two scripts each) a script waited a
quarter of a second for its turn and a handshake half a second (docs/performance.md, eighth
pass). requirements.txt pins a redis-py without that lock; this keeps it so.
"""

from __future__ import annotations

import asyncio

from presence import store

COMMANDS = 200


async def _loop_iterations_during(work: asyncio.Future[object]) -> int:
    """How many event loop iterations pass until ``work`` is done."""
    loop = asyncio.get_running_loop()
    iterations = 0

    def tick() -> None:
        nonlocal iterations
        iterations += 1
        if not work.done():
            loop.call_soon(tick)

    loop.call_soon(tick)
    await work
    return iterations


async def test_concurrent_commands_do_not_queue_for_the_pool_one_iteration_each() -> None:
    client = store.get_async_redis()
    # First round: the pool opens its connections (a connect takes iterations of its own).
    await asyncio.gather(*(client.ping() for _ in range(COMMANDS)))

    work = asyncio.gather(*(client.incr("presence:test:concurrency") for _ in range(COMMANDS)))
    iterations = await _loop_iterations_during(work)

    assert await client.get("presence:test:concurrency") == str(COMMANDS)
    # Side by side, the 200 commands take a handful of iterations (measured: 7 or 8 with
    # redis-py 7.4); queued behind the pool's lock they took three each (632 with 6.4).
    assert iterations < COMMANDS / 4, iterations
