"""Run a coroutine at once, in the caller, and make a task only if it has to wait.

The fan-out sends each diff frame to thousands of sockets per window. A send to a writable
socket never waits (uvicorn writes to the transport at once), yet it ran in a task of its
own per socket and per frame: the task's creation and the process inspector's task clock
were ~5 % of a connect storm's profile with views, and thousands of tasks were alive at
each flush. :func:`eager` does what Python 3.12's eager task factory does, for one
coroutine: it runs it up to its first wait, and only a send that has to wait (the client is
not reading) continues in a task. Measured (docs/performance.md, fifth pass): RSS per
connection in that storm 5 % lower; the CPU per connect moved within the runs' spread.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


def eager(coro: Coroutine[Any, Any, None]) -> asyncio.Task[None] | None:
    """Run ``coro`` now until it finishes or waits.

    Returns None when it finished (an exception it raised is raised here), or the task that
    runs the rest of it once what it waits for is done. Call it inside a running loop.
    """
    try:
        waiting = coro.send(None)
    except StopIteration:
        return None
    return asyncio.get_running_loop().create_task(_finish(coro, waiting))


async def _finish(coro: Coroutine[Any, Any, None], waiting: Any) -> None:
    """Continue ``coro``, which yielded ``waiting``, as a task would have."""
    while True:
        if waiting is None:
            await asyncio.sleep(0)  # it yielded bare (asyncio.sleep(0)): one turn of the loop
        else:
            # Take the future over from the yield, as a task's step does: its flag says a
            # yield is waiting for a task to consume it, and a second await refuses it.
            waiting._asyncio_future_blocking = False
            try:
                # Wait for it without reading its outcome: ``coro`` reads that on resuming.
                await waiting
            except BaseException:
                if not waiting.done():  # not its outcome: this task is being torn down
                    coro.close()
                    raise
        try:
            waiting = coro.send(None)
        except StopIteration:
            return
