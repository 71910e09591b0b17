"""A web process to inspect, inside the test process: a ``LocalProcess`` (the registry
refresher and the inspector, presence/live/processes.py) serving from an event loop of its
own thread, so sync code (the console's views, ``ask_process``) can ask it through the real
Redis while it answers, as a uvicorn worker would."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from typing import Any

from presence.live.processes import LocalProcess, list_processes


class ThreadedProcess:
    """``with ThreadedProcess() as p:`` registers ``p.proc`` and answers its requests."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.proc = LocalProcess()
        self.thread = threading.Thread(target=self.loop.run_forever, name="inspected-loop")
        # Strong references to the spawned tasks: the loop only keeps weak ones, and a
        # leaked task that the collector destroyed would not be a leak to look at.
        self.spawned: list[asyncio.Task[Any]] = []

    @property
    def id(self) -> str:
        return self.proc.id

    def __enter__(self) -> ThreadedProcess:
        self.thread.start()
        self.loop.call_soon_threadsafe(self.proc.start, self.loop)
        deadline = time.monotonic() + 10
        while not any(p["id"] == self.id for p in list_processes()):
            if time.monotonic() > deadline:
                raise AssertionError("the threaded process never registered")
            time.sleep(0.02)
        return self

    def run(self, coro: Coroutine[Any, Any, Any], timeout: float = 10) -> Any:
        """Run ``coro`` in the process's loop and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str | None = None) -> None:
        """Start ``coro`` as a task of the process's loop and leave it running (a leak)."""

        async def start() -> None:
            self.spawned.append(asyncio.get_running_loop().create_task(coro, name=name))

        self.run(start())

    def __exit__(self, *exc: object) -> None:
        async def shutdown() -> None:
            me = asyncio.current_task()
            tasks = [t for t in asyncio.all_tasks() if t is not me]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        try:
            self.run(shutdown())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
            self.loop.close()
