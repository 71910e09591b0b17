"""One instance per event loop: the hot-path writer, the log reader, Redis clients, timers.

asyncio objects (connections, futures, tasks) belong to the loop that made them, so the
per-process machinery keeps one instance per running loop. A web process has one loop; tests
run many, one after the other. :class:`LoopLocal` is the one way the project does this: it
holds loops weakly (a finished loop and its instance go away with it) and answers the common
case from a one-entry cache.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class LoopLocal(Generic[T]):
    """A value of type ``T`` per running event loop, made by ``factory(loop)`` on first use."""

    def __init__(self, factory: Callable[[asyncio.AbstractEventLoop], T] | None = None) -> None:
        self._factory = factory
        self._values: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, T] = (
            weakref.WeakKeyDictionary()
        )
        # WARNING: hot path. get() runs several times per frame, and a WeakKeyDictionary
        # lookup there was ~6 % of a heartbeat's CPU: the last loop asked about and its value
        # answer nearly always. A strong reference to that loop until another loop asks (only
        # tests run several).
        self._last: tuple[asyncio.AbstractEventLoop | None, T | None] = (None, None)

    def get(self, make: Callable[[asyncio.AbstractEventLoop], T] | None = None) -> T:
        """The running loop's value, made now (by ``make``, else the factory) if it has none.

        Raises RuntimeError outside a running loop.
        """
        loop = asyncio.get_running_loop()
        cached_loop, cached = self._last
        if cached_loop is loop and cached is not None:
            return cached
        value = self._values.get(loop)
        if value is None:
            # A task of a finished loop can keep that loop alive: drop those (tests only).
            for old in [lp for lp in self._values if lp.is_closed()]:
                del self._values[old]
            factory = make or self._factory
            assert factory is not None, "LoopLocal.get() needs a factory"
            value = self._values[loop] = factory(loop)
        self._last = (loop, value)
        return value

    def peek(self) -> T | None:
        """The running loop's value if it has one; None outside a loop too."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return None
        return self._values.get(loop)

    def discard(self) -> None:
        """Forget the running loop's value (its start failed: the next get() makes another)."""
        loop = asyncio.get_running_loop()
        self._values.pop(loop, None)
        if self._last[0] is loop:
            self._last = (None, None)

    def clear(self) -> None:
        """Forget every loop's value (after a settings change, in tests)."""
        self._values.clear()
        self._last = (None, None)
